"""Verdicts over a robustness grid (`grid.py`): in how many settings each result holds.

Per run, a task is *solved* at held-out answer accuracy >= `claims.SOLVED` (extrapolation: at the
longest evaluated length). A setting solves a task when most of its seeds do.

Each claim of `claims.evaluate` is decided per seed, a setting takes the outcome most of its seeds
give (else inconclusive), and over the settings the claim

    holds                   confirmed in at least HOLDS (80%) of the settings,
    fails                   refuted in at least HOLDS of the settings,
    depends on the setting  otherwise; the report names the settings on each side,
    undecided               inconclusive in every setting (e.g. no query-key attention solves
                            the task anywhere, so "fails where it is learnable" has nothing to
                            compare),
    not tested              the grid has none of the runs it needs.

`write(out)` draws `OUT/grid.md` and one heatmap per task (variants x settings, the share of
seeds that solve it), and writes `OUT/results.csv`: one row per run of every setting and seed.
"""
import dataclasses
import os
from typing import Optional

import numpy as np

from synth_jax.diagnostics import claims
from synth_jax.diagnostics import plots
from synth_jax.diagnostics import report
from synth_jax.diagnostics import results_file

HOLDS = 0.8
HOLDS_VERDICT, FAILS, DEPENDS = 'holds', 'fails', 'depends on the setting'
UNDECIDED, NOT_TESTED = 'undecided', 'not tested'
GRID_TASKS = ('mqar', 'induction', 'selective_copy', 'overwrite', 'extrapolation')


@dataclasses.dataclass(frozen=True)
class Cell:
  """The results of one seed in one setting."""
  setting: str
  seed: int
  results: dict


def load(out: str) -> list[Cell]:
  """Every `OUT/<setting>/seed<N>/results.json(.gz)` that has runs, by setting then seed."""
  cells = []
  for directory in results_file.grid_directories(out):
    results = results_file.load(os.path.join(directory, 'results.json'))
    if results['runs']:
      setting, seed = os.path.split(directory)
      cells.append(Cell(os.path.basename(setting), int(seed[len('seed'):]), results))
  return cells


def settings(cells: list[Cell]) -> list[str]:
  return list(dict.fromkeys(cell.setting for cell in cells))


def solved(run: dict, task: str) -> Optional[bool]:
  """Whether `run` solves `task` (None: it has no accuracy for it)."""
  if task == 'extrapolation':
    rows = run.get('extrapolation') or []
    if not rows:
      return None
    longest = max(rows, key=lambda row: row['factor'])
    return longest['accuracy'] is not None and longest['accuracy'] >= claims.SOLVED
  return run['final_accuracy'] >= claims.SOLVED


def seeds_solving(cells: list[Cell], task: str) -> dict[str, dict[str, tuple[int, int]]]:
  """variant -> setting -> (seeds that solve `task`, seeds that ran it)."""
  table = {}
  for cell in cells:
    for variant, run in claims.base_runs(cell.results, task).items():
      outcome = solved(run, task)
      if outcome is None:
        continue
      wins, ran = table.setdefault(variant, {}).get(cell.setting, (0, 0))
      table[variant][cell.setting] = (wins + outcome, ran + 1)
  return table


def setting_solves(wins: int, ran: int) -> bool:
  return 2 * wins > ran


def majority(outcomes: list[str]) -> str:
  """The outcome most of a setting's seeds give, or inconclusive."""
  for outcome in (claims.CONFIRMED, claims.REFUTED):
    if 2 * outcomes.count(outcome) > len(outcomes):
      return outcome
  return claims.INCONCLUSIVE


@dataclasses.dataclass(frozen=True)
class Verdict:
  claim: str
  test: str
  verdict: str
  per_setting: dict  # setting -> its majority outcome

  def settings_with(self, outcome: str) -> list[str]:
    return [s for s, o in self.per_setting.items() if o == outcome]


def claim_verdicts(cells: list[Cell]) -> list[Verdict]:
  """Every claim of `claims.evaluate`, decided per seed, per setting, then over the grid."""
  per_cell = [(cell.setting, claims.evaluate(cell.results)) for cell in cells]
  if not per_cell:
    return []
  verdicts = []
  for index, first in enumerate(per_cell[0][1]):
    by_setting, tested = {}, False
    for setting, outcomes in per_cell:
      by_setting.setdefault(setting, []).append(outcomes[index].outcome)
      tested |= not outcomes[index].evidence.startswith('not run')
    per_setting = {s: majority(o) for s, o in by_setting.items()}
    count = len(per_setting)
    confirmed = sum(o == claims.CONFIRMED for o in per_setting.values())
    refuted = sum(o == claims.REFUTED for o in per_setting.values())
    verdict = (NOT_TESTED if not tested else HOLDS_VERDICT if confirmed >= HOLDS * count
               else FAILS if refuted >= HOLDS * count else UNDECIDED if not confirmed + refuted
               else DEPENDS)
    verdicts.append(Verdict(first.claim, first.test, verdict, per_setting))
  return verdicts


def heatmap(table: dict, columns: list[str], task: str, out: str) -> str:
  """Variants x settings, colour the share of seeds solving `task`, each cell labelled k/n."""
  variants = list(table)
  shares = np.full((len(variants), len(columns)), np.nan)
  figure, axis = plots.new_figure(figsize=(1.2 * len(columns) + 2.5, 0.35 * len(variants) + 1.8))
  for i, variant in enumerate(variants):
    for j, setting in enumerate(columns):
      if setting in table[variant]:
        wins, ran = table[variant][setting]
        shares[i, j] = wins / ran
        axis.text(j, i, f'{wins}/{ran}', ha='center', va='center', fontsize=8)
  axis.imshow(shares, cmap='RdYlGn', vmin=0, vmax=1, aspect='auto')
  axis.set_xticks(range(len(columns)), columns, rotation=30, ha='right', fontsize=8)
  axis.set_yticks(range(len(variants)), variants, fontsize=8)
  axis.set_title(f'{task}: seeds solving (accuracy >= {claims.SOLVED})')
  figure.tight_layout()
  path = os.path.join(out, f'heatmap_{task}.png')
  figure.savefig(path, dpi=110)
  return path


def task_lines(table: dict, columns: list[str], task: str) -> list[str]:
  header = ['variant', 'solved in'] + [f'`{c}`' for c in columns]
  rows = []
  for variant, by_setting in table.items():
    ran = [by_setting[c] for c in columns if c in by_setting]
    wins = sum(setting_solves(*cell) for cell in ran)
    rows.append([variant, f'**{wins} of {len(ran)}** settings']
                + [f'{by_setting[c][0]}/{by_setting[c][1]}' if c in by_setting else '-'
                   for c in columns])
  return [f'## {report.TASK_TITLES.get(task, task)}', '',
          'Seeds solving it per setting; a setting solves it when most of its seeds do.', '',
          *report.table(header, rows), '', f'![heatmap_{task}](heatmap_{task}.png)', '']


def claim_lines(verdicts: list[Verdict]) -> list[str]:
  rows = []
  for v in verdicts:
    count = len(v.per_setting)
    sides = [f'{label} in {len(found)} of {count}' + (f': {", ".join(found)}' if
                                                        v.verdict == DEPENDS and found else '')
             for label, found in (('confirmed', v.settings_with(claims.CONFIRMED)),
                                  ('refuted', v.settings_with(claims.REFUTED)),
                                  ('inconclusive', v.settings_with(claims.INCONCLUSIVE)))]
    rows.append([v.claim, v.test, '; '.join(sides), f'**{v.verdict}**'])
  return (['## Claims over the grid', '',
           f'A claim holds when confirmed in at least {HOLDS:.0%} of the settings, fails when '
           f'refuted in at least {HOLDS:.0%}, and otherwise depends on the setting; a setting '
           'takes the outcome most of its seeds give.', '']
          + report.table(['claim', 'test (per seed)', 'settings', 'verdict'], rows) + [''])


def write(out: str) -> str:
  """Writes `OUT/grid.md`, the heatmaps and `OUT/results.csv` from the grid's results; returns
  what it wrote."""
  cells = load(out)
  if not cells:
    raise SystemExit(f'{out} holds no grid results (OUT/<setting>/seed<N>/results.json).')
  columns = settings(cells)
  meta = cells[0].results['meta']
  seeds = sorted({cell.seed for cell in cells})
  lines = ['# synth-jax diagnostics: robustness grid', '',
           f"Grid `{meta.get('grid')}` over preset `{meta['preset']}`, device {meta['device']}, "
           f"{len(columns)} settings (heads x head width . positions . peak rate), seeds "
           f"{', '.join(map(str, seeds))}; every run {meta['train']['steps']} steps of batch "
           f"{meta['train']['batch_size']}.", '',
           'Commands: ' + '; '.join(report.commands(cells[0].results.get('commands', []))), '']
  images = []
  for task in GRID_TASKS:
    table = seeds_solving(cells, task)
    if table:
      lines += task_lines(table, columns, task)
      images.append(heatmap(table, columns, task, out))
  lines += claim_lines(claim_verdicts(cells))
  path = os.path.join(out, 'grid.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  table = report.write_csv([row for cell in cells
                            for row in report.csv_rows(cell.results, cell.seed, cell.setting)], out)
  return f'{path}, {table} and {len(images)} heatmaps'
