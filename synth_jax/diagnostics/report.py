"""`report.md` from `results.json`: per-task tables, sweeps, extrapolation, statistics, claims;
and `results.csv`, one row per run, for pandas or a spreadsheet.

Every number in the report is read from the results; the claims table is decided by
`claims.evaluate` from the same numbers.
"""
import csv
import os
import statistics as stats
from typing import Sequence

from synth_jax.diagnostics import claims
from synth_jax.diagnostics import statistics

TASK_TITLES = {
    'mqar': "Multi-query associative recall (Zoology, Arora et al. 2023)",
    'induction': 'Induction (repeat of a random-length suffix; Olsson et al. 2022)',
    'selective_copy': 'Selective copying (Mamba, Gu & Dao 2023)',
    'overwrite': 'Overwrite: each key bound twice, the later binding wins',
    'extrapolation': 'Length extrapolation: trained at L, evaluated at longer lengths',
}


def table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]


def accuracy(value) -> str:
  return '-' if value is None else f'{value:.3f}'


def task_names(results: dict) -> list[str]:
  """The tasks with a table, in `TASK_TITLES` order."""
  return [t for t in TASK_TITLES if claims.base_runs(results, t)]


def setting(run: dict) -> str:
  job = run['job']
  options = ', '.join(f'{k}={v}' for k, v in sorted(job['options'].items()))
  return (f"{job['task']} at length {job['length']}, vocabulary {job['vocab_size']}"
          + (f', {options}' if options else '') + f"; chance (uniform guess) {run['chance']:.3f}")


def task_section(results: dict, task: str) -> list[str]:
  runs = claims.base_runs(results, task)
  first = next(iter(runs.values()))
  lines = [f'## {TASK_TITLES[task]}', '', setting(first) + '.', '']
  if task == 'extrapolation':
    factors = [row['factor'] for row in first['extrapolation']]
    header = ['variant'] + [f'{f}L ({f * first["job"]["length"]})' for f in factors]
    rows = [[variant] + [row['status'] if row['accuracy'] is None else accuracy(row['accuracy'])
                         for row in run['extrapolation']] for variant, run in runs.items()]
    lines += table(header, rows)
    reasons = {row['reason'].split(':')[0] for run in runs.values()
               for row in run['extrapolation'] if row['accuracy'] is None}
    if reasons:
      lines += ['', '"cannot run": the model refuses longer inputs (' + '; '.join(sorted(reasons))
                + '), which is not an accuracy of 0.']
    return lines + ['']
  rows = [[variant, accuracy(run['final_accuracy']),
           '-' if run['steps_to_90'] is None else run['steps_to_90'], f"{run['seconds']:.0f}"]
          for variant, run in runs.items()]
  return lines + table(['variant', 'final accuracy', 'steps to 90%', 'train seconds'], rows) + ['']


def sweep_section(results: dict, group: str, key: str, title: str) -> list[str]:
  runs = [r for r in results['runs'].values() if group in r['job']['groups']]
  if not runs:
    return []
  value = lambda r: r['job']['options']['num_kv_pairs'] if key == 'kv' else r['job']['width']
  points = sorted({value(r) for r in runs})
  variants = list(dict.fromkeys(r['job']['variant'] for r in runs))
  cell = {(r['job']['variant'], value(r)): r['final_accuracy'] for r in runs}
  rows = [[v] + [accuracy(cell.get((v, p))) for p in points] for v in variants]
  return [f'## {title}', ''] + table(['variant'] + [str(p) for p in points], rows) + ['']


def _mean(values) -> float:
  values = [v for v in values if v is not None]
  return sum(values) / len(values) if values else float('nan')


def statistics_section(results: dict) -> list[str]:
  """Per base run: head similarity and normalized entropy of its attention maps (mean over
  heads and layers) and the median condition number of its W_Q W_K^T heads (`statistics.py`)."""
  rows = []
  for run_id, run in results['runs'].items():
    recorded = run.get('statistics') or {}
    layers = recorded.get('attention') or []
    if not layers or 'base' not in run['job']['groups']:
      continue
    similarity = _mean([statistics.mean_head_similarity_of(layer) for layer in layers])
    entropy = _mean([_mean(layer['normalized_entropy']) for layer in layers])
    conditions = sorted(c for module in (recorded.get('projections') or {}).values()
                        for c in module['query_key']['condition_number'] if c is not None)
    condition = f'{stats.median(conditions):.1f}' if conditions else '-'
    rows.append([run_id, f'{similarity:.3f}', f'{entropy:.3f}', condition])
  if not rows:
    return []
  header = ['run', 'head similarity (1 = identical heads)', 'normalized entropy',
            'cond(W_Q W_K^T), median head']
  return ['## Attention statistics', ''] + table(header, rows) + ['']


def claims_section(results: dict) -> list[str]:
  outcomes = claims.evaluate(results)
  rows = [[o.claim, o.test, o.evidence, f'**{o.outcome}**'] for o in outcomes]
  return (['## Claims', '',
           f'Decided by thresholds from the numbers above: solves >= {claims.SOLVED}, fails < '
           f'{claims.FAILED} held-out answer accuracy.', '']
          + table(['claim', 'test', 'evidence', 'outcome'], rows) + [''])


def commands(recorded: Sequence[dict]) -> list[str]:
  """Each recorded command once, as "`argv` (date)"; the parts of one request (equal but for
  `--part N`) as one command with `--part 1,2,...` and its first date."""
  grouped = {}
  for command in recorded:
    argv = list(command['argv'])
    part = None
    if '--part' in argv[:-1]:
      i = argv.index('--part')
      part, argv = argv[i + 1], argv[:i + 1] + ['{parts}'] + argv[i + 2:]
    key = ' '.join(argv)
    first = grouped.setdefault(key, {'parts': [], 'date': command['date']})
    if part is not None and part not in first['parts']:
      first['parts'].append(part)
  listed = []
  for key, entry in grouped.items():
    parts = ','.join(sorted(entry['parts'], key=int))
    listed.append(f"`{key.replace('{parts}', parts)}` ({entry['date']})")
  return listed


CSV_COLUMNS = ('variant', 'task', 'setting', 'seed', 'final_accuracy', 'steps_to_90', 'chance')


def csv_rows(results: dict, seed: int, setting: str = '') -> list[dict]:
  """One `CSV_COLUMNS` row per run of `results`. A run's setting is what its id adds to its task
  and variant (`mqar/kv=12/random` -> 'kv=12', 'base' when nothing), after `setting` (a grid's
  setting name, e.g. '2x64.relative.lr0.005'); steps_to_90 is empty when 90% was never reached.
  """
  rows = []
  for run_id, run in results['runs'].items():
    parts = run_id.split('/')
    job = run.get('job') or {}
    tags = '/'.join([setting] * bool(setting) + parts[1:-1])
    steps = run.get('steps_to_90')
    rows.append({'variant': job.get('variant', parts[-1]), 'task': job.get('task', parts[0]),
                 'setting': tags or 'base', 'seed': seed,
                 'final_accuracy': run['final_accuracy'],
                 'steps_to_90': '' if steps is None else steps, 'chance': run.get('chance', '')})
  return rows


def write_csv(rows: Sequence[dict], out_dir: str) -> str:
  """Writes `out_dir/results.csv` (a header of `CSV_COLUMNS`, then `rows`); returns its path."""
  path = os.path.join(out_dir, 'results.csv')
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return path


def write(results: dict, out_dir: str, images: Sequence[str] = ()) -> str:
  """Writes `out_dir/report.md`; returns its path."""
  meta = results['meta']
  train = meta['train']
  lines = ['# synth-jax diagnostics', '',
           f"Preset `{meta['preset']}`, seed {meta['seed']}, device {meta['device']}, jax "
           f"{meta['jax']}. Model: " + ', '.join(f'{k}={v}' for k, v in meta['model'].items())
           + f". Every run: {train['steps']} steps of batch {train['batch_size']}, AdamW peak "
           f"rate {train['learning_rate']}, held-out accuracy on answers every "
           f"{train['eval_every']} steps over {train['eval_examples']} examples.", '',
           'Commands: ' + '; '.join(commands(results.get('commands', []))), '']
  for task in task_names(results):
    lines += task_section(results, task)
  lines += sweep_section(results, 'kv_pairs', 'kv', 'MQAR accuracy by number of kv pairs')
  lines += sweep_section(results, 'width', 'width', 'MQAR accuracy by model width')
  lines += statistics_section(results)
  lines += claims_section(results)
  if images:
    lines += ['## Plots', ''] + [f'![{os.path.basename(p)}]({os.path.basename(p)})'
                                 for p in images] + ['']
  path = os.path.join(out_dir, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines))
  return path
