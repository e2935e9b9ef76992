"""Robustness grids: every variant in several reasonable settings, three seeds each, equal steps.

A claim read from one setting can flip in another equally reasonable one
(docs/history/RESULTS-2026-12-01.md).
A grid trains every requested variant on its tasks in each setting of

    head shapes x position schemes x learning rates      (x the seeds of each)

with the base preset's budget (equal steps and data for every variant within a setting), and
`verdicts.py` says in how many settings each result holds.

Runs that share a model shape (a head shape, a position scheme, a variant, a task) differ only in
rate and seed, so they train as one compiled program (`train.train_group`, a `jax.vmap` over the
runs): one compile and one device launch per step for the whole group instead of one per run.

Results land one directory per setting and seed, each an ordinary `diagnose` results file:

    OUT/<heads>x<head_dim>.<positions>.lr<rate>/seed<seed>/results.json

so `diagnose --report_only`, `diagnose-compare` and the claims read every cell as they read any
run; `OUT/grid.md` and `OUT/heatmap_<task>.png` summarise the grid and `OUT/results.csv` lists
every run of every setting and seed (`verdicts.py`). Each group prints its time left as it
trains and, when done, the sweep's runs done and time left.

  synth-jax diagnose --preset robust --attention vanilla,random,orthogonal --out DIR [--part N]
"""
import dataclasses
import datetime
import os
import time
from typing import Optional, Sequence

from synth_jax import progress
from synth_jax.diagnostics import extrapolation
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import results_file
from synth_jax.diagnostics import verdicts
from synth_jax.diagnostics import jobs as jobs_lib
from synth_jax.diagnostics import statistics
from synth_jax.diagnostics import train as train_lib


@dataclasses.dataclass(frozen=True)
class Setting:
  """One cell of a grid's settings axis (the seeds are another axis)."""
  num_heads: int
  positions: str
  learning_rate: float

  def name(self, width: int) -> str:
    """e.g. '4x32.none.lr0.002': heads x head width, position scheme, peak rate."""
    return f'{self.num_heads}x{width // self.num_heads}.{self.positions}.lr{self.learning_rate:g}'


@dataclasses.dataclass(frozen=True)
class Grid:
  """Attributes:
    name: how `--preset` names it.
    preset: the base preset (model, budget, tasks); its sweeps are not run.
    num_heads, positions, learning_rates: the settings axes.
    seeds: every setting's seeds; a setting solves a task when most of them do.
    tasks: the tasks trained in every setting ('extrapolation' evaluates its task's runs at the
      preset's longer lengths).
    groups_per_part: groups (each `len(learning_rates) * len(seeds)` runs) per `--part`.
    overrides: `(name, value)` pairs the command line changed: `steps`, `batch_size` (of the
      budget), or model fields.
  """
  name: str
  preset: str
  num_heads: tuple
  positions: tuple
  learning_rates: tuple
  seeds: tuple = (0, 1, 2)
  tasks: tuple = ('mqar', 'induction', 'extrapolation')
  groups_per_part: int = 0
  overrides: tuple = ()  # (name, value): the budget's steps, batch_size, or model fields

  def base(self) -> presets.Preset:
    options = dict(self.overrides)
    budget = {k: options.pop(k) for k in ('steps', 'batch_size') if k in options}
    base = presets.get(self.preset, **options)
    return dataclasses.replace(base, train=dataclasses.replace(base.train, **budget),
                               kv_pairs_sweep=(), width_sweep=())

  def settings(self) -> list[Setting]:
    return [Setting(h, p, r) for h in self.num_heads for p in self.positions
            for r in self.learning_rates]

  def preset_for(self, setting: Setting) -> presets.Preset:
    """The base preset as one setting runs it."""
    base = self.base()
    return dataclasses.replace(
        base, model={**base.model, 'num_heads': setting.num_heads,
                     'positions': setting.positions},
        train=dataclasses.replace(base.train, learning_rate=setting.learning_rate))

  def setting_name(self, setting: Setting) -> str:
    return setting.name(self.base().model['width'])


GRIDS = {
    # The research grid (the 'full' preset: width 128, length 256, vocabulary 8192, 2000 steps):
    # 8 settings x 3 seeds. 5e-3 is the full preset's rate, 2e-3 the next of its probe.
    'robust': Grid(name='robust', preset='full', num_heads=(2, 4), positions=('relative', 'none'),
                   learning_rates=(5e-3, 2e-3), groups_per_part=8),
    # The same axes on the tiny preset: a laptop CPU runs a variant's grid in minutes.
    'robust_tiny': Grid(name='robust_tiny', preset='tiny', num_heads=(2, 4),
                        positions=('relative', 'none'), learning_rates=(6e-3, 3e-3)),
}


@dataclasses.dataclass(frozen=True)
class Group:
  """Runs that train as one program: one job (task, variant) at one head shape and position
  scheme, for every rate and seed of the grid."""
  num_heads: int
  positions: str
  job: jobs_lib.Job
  runs: tuple  # of train.Run

  @property
  def id(self) -> str:
    return f'{self.num_heads}h.{self.positions}/{self.job.id}'


def plan(grid: Grid, variants: Sequence[str]) -> list[Group]:
  """Every group of the grid for `variants`, in a fixed order (shape, positions, task, variant)."""
  runs = tuple(train_lib.Run(seed, rate) for rate in grid.learning_rates for seed in grid.seeds)
  jobs = jobs_lib.plan(grid.base(), grid.tasks, variants)
  return [Group(h, p, job, runs) for h in grid.num_heads for p in grid.positions for job in jobs]


def parts(grid: Grid, groups: list[Group]) -> list[list[Group]]:
  size = grid.groups_per_part or len(groups) or 1
  return [groups[i:i + size] for i in range(0, len(groups), size)]


def results_path(out: str, grid: Grid, setting: Setting, seed: int) -> str:
  return os.path.join(out, grid.setting_name(setting), f'seed{seed}', 'results.json')


def cells(grid: Grid, group: Group) -> list[tuple[Setting, int]]:
  """(setting, seed) of each run of `group`, in its order."""
  return [(Setting(group.num_heads, group.positions, run.learning_rate), run.seed)
          for run in group.runs]


def train_group(group: Group, grid: Grid, execution: str, label: str) -> list[dict]:
  """Trains `group`'s runs as one program; returns their records (as `run.run_job`'s)."""
  setting = Setting(group.num_heads, group.positions, grid.learning_rates[0])
  preset = grid.preset_for(setting)
  model = jobs_lib.build_model(group.job, preset.model, execution)
  records, variables = train_lib.train_group(model, group.job.task, preset.train, group.runs,
                                             label=label)
  seeds = [run.seed for run in group.runs]
  if 'extrapolation' in group.job.groups:
    rows = extrapolation.evaluate_lengths_group(model, variables, group.job.task, seeds,
                                                preset.train, preset.extrapolation_factors)
    for record, run_rows in zip(records, rows):
      record['extrapolation'] = run_rows
  for record, measured in zip(records, jobs_lib.measure_statistics_group(
      model, variables, group.job.task, seeds)):
    record['statistics'] = measured
    record['job'] = jobs_lib.job_description(group.job)
  return [statistics.as_json(record) for record in records]


def _meta(grid: Grid, setting: Setting, seed: int, execution: str) -> dict:
  return {**jobs_lib.metadata(grid.preset_for(setting), seed, execution), 'grid': grid.name,
          'setting': grid.setting_name(setting)}


def is_done(out: str, grid: Grid, group: Group, execution: str, read_only: bool = False) -> bool:
  """Whether every run of `group` is already recorded for all its groups (`--skip_done`);
  `read_only` checks without a lock or a write (`--plan`)."""
  check = results_file.is_recorded if read_only else results_file.reuse_recorded_run
  return all(check(
      results_path(out, grid, setting, seed), _meta(grid, setting, seed, execution),
      group.job.id, group.job.groups, jobs_lib.TAG_ONLY_GROUPS)
             for setting, seed in cells(grid, group))


def record_command(out: str, grid: Grid, argv: Sequence[str], device: str, execution: str):
  """Adds the command to every cell's results file (a wrong --out fails before training)."""
  command = {'argv': ['synth-jax', 'diagnose', *argv],
             'date': datetime.datetime.now().isoformat(timespec='seconds'), 'device': device}
  for setting in grid.settings():
    for seed in grid.seeds:
      path = results_path(out, grid, setting, seed)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      results_file.update(path, _meta(grid, setting, seed, execution), command=command)


def run(grid: Grid, variants: Sequence[str], out: str, argv: Sequence[str],
        part: Optional[int], show_plan: bool, skip_done: bool, execution: str,
        draw: bool) -> int:
  """`synth-jax diagnose --preset <grid>`: train the chosen part of the grid, then draw."""
  all_parts = parts(grid, plan(grid, variants))
  if show_plan:  # with --skip_done, recorded parts say so (tools/make_queue.py leaves them out)
    for i, chosen in enumerate(all_parts, 1):
      recorded = skip_done and all(is_done(out, grid, group, execution, read_only=True)
                                  for group in chosen)
      print(f'part {i}/{len(all_parts)}: ' + ', '.join(group.id for group in chosen)
            + (' (recorded)' if recorded else ''))
    return 0
  if part is not None and not 1 <= part <= len(all_parts):
    raise SystemExit(f'--part {part}: this grid has parts 1..{len(all_parts)}.')
  chosen = all_parts[part - 1] if part else [g for p in all_parts for g in p]
  settings = grid.settings()
  device = _meta(grid, settings[0], grid.seeds[0], execution)['device']
  record_command(out, grid, argv, device, execution)
  runs = sum(len(group.runs) for group in chosen)
  where = f'part {part}/{len(all_parts)}, ' if part else ''
  print(f'diagnose: {where}{len(chosen)} groups of {len(chosen[0].runs) if chosen else 0} runs '
        f'({runs} runs), grid {grid.name} over preset {grid.preset}', flush=True)
  started, trained = time.perf_counter(), 0
  for i, group in enumerate(chosen, 1):
    label = f'[{i}/{len(chosen)}] {group.id}'
    if skip_done and is_done(out, grid, group, execution):
      progress.show(f'{label}: already recorded, kept')
      continue
    group_started = time.perf_counter()
    records = train_group(group, grid, execution, label)
    for (setting, seed), record in zip(cells(grid, group), records):
      results_file.update(results_path(out, grid, setting, seed),
                          _meta(grid, setting, seed, execution), runs={group.job.id: record})
    trained, now = trained + len(records), time.perf_counter()
    sweep = progress.eta(now - started, trained, trained + sum(len(g.runs) for g in chosen[i:]))
    accuracies = ' '.join(f'{r["final_accuracy"]:.2f}' for r in records)
    progress.show(f'{label}: final accuracy {accuracies} ({now - group_started:.0f} s, '
                  f'{len(records)} runs); sweep runs {sweep}')
  elapsed = time.perf_counter() - started
  if chosen:
    print(f'{runs} runs in {elapsed:.0f} s: {60 * runs / max(elapsed, 1e-9):.1f} runs a minute',
          flush=True)
  if draw:
    print(f'wrote {verdicts.write(out)}')
  return 0
