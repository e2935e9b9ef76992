"""`synth-jax diagnose-compare DIR...`: one table of runs across results files that differ in a
setting or more (learning rate, seed, steps, ...): how robust a variant's result is to them.

Each directory holds one configuration (`results_file.CONFIGURATION_KEYS`); its column is named
by the settings in which it differs from the others (`train.learning_rate=0.002`, `seed=1`). A
row is a run id (`mqar/vanilla`, `mqar/kv=8/rotary`, ...) with its final held-out accuracy in
each file ('-' where that file has no such run; rows in one file only are left out unless
`--all_runs`), then:
  best     the column of the highest accuracy (Zoology reports each variant at its best rate),
           or '-' when no column solved the run or the top columns tie at the shown precision;
  solved   in how many of the files that ran it the accuracy reached `claims.SOLVED`.

A robustness grid's `--out` (`grid.py`) counts as its settings' and seeds' directories.

Usage:
  synth-jax diagnose-compare results/full results/rate-2e-3 results/rate-1e-3 [--tasks mqar]
      [--out compare.md]
  synth-jax diagnose-compare GRID_OUT --tasks induction
"""
import os
import sys
from typing import Optional, Sequence

from synth_jax.diagnostics import claims
from synth_jax.diagnostics import flags
from synth_jax.diagnostics import report
from synth_jax.diagnostics import results_file


def flat_configuration(meta: dict) -> dict:
  """`meta`'s configuration as dotted keys: {'train.learning_rate': 0.005, 'seed': 0, ...}."""
  flat = {}
  for key in results_file.CONFIGURATION_KEYS:
    value = results_file.configuration(meta, key)
    if isinstance(value, dict):
      flat.update({f'{key}.{name}': v for name, v in value.items()})
    else:
      flat[key] = value
  return flat


def column_names(metas: Sequence[dict]) -> list[str]:
  """Per file, the settings that tell it from the others ('k=v, ...'); the files must differ."""
  flats = [flat_configuration(m) for m in metas]
  keys = sorted({k for f in flats for k in f})
  differing = [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1]
  names = [', '.join(f'{k}={f.get(k)}' for k in differing) for f in flats]
  if len(set(names)) < len(names):
    raise SystemExit('two of these results files hold the same configuration; give directories '
                     'that differ in a setting (learning rate, seed, ...).')
  return names


def order(run_id: str):
  """Tasks in the report's order, each base run before its sweep points, sweep points by value
  (kv=4 before kv=16)."""
  def part_key(part: str):
    name, _, value = part.partition('=')
    return (0, name, int(value)) if value.isdigit() else (1, part, 0)
  task, *rest = run_id.split('/')
  titles = list(report.TASK_TITLES)
  return (titles.index(task) if task in titles else len(titles), len(rest),
          [part_key(part) for part in rest])


def best_column(accuracies: Sequence[Optional[float]]) -> Optional[int]:
  """The index of the highest accuracy; None if none reached `claims.SOLVED` or the top ones
  tie at three decimals (no setting to prefer)."""
  shown = [None if a is None else round(a, 3) for a in accuracies]
  top = max((a for a in shown if a is not None), default=None)
  if top is None or top < claims.SOLVED or shown.count(top) > 1:
    return None
  return shown.index(top)


def rows(all_runs: Sequence[dict], tasks: Optional[Sequence[str]] = None,
         min_files: int = 1) -> list[list]:
  """Per run id in `order` that `min_files` or more files hold: its accuracy per file (None if
  absent), `best_column`, how many files solved it, how many ran it."""
  ids = sorted({i for runs in all_runs for i in runs
                if not tasks or i.split('/')[0] in tasks}, key=order)
  ids = [i for i in ids if sum(i in runs for runs in all_runs) >= min_files]
  out = []
  for run_id in ids:
    accuracies = [runs[run_id]['final_accuracy'] if run_id in runs else None
                  for runs in all_runs]
    ran = [a for a in accuracies if a is not None]
    out.append([run_id, accuracies, best_column(accuracies),
                sum(a >= claims.SOLVED for a in ran), len(ran)])
  return out


def markdown(directories: Sequence[str], loaded: Sequence[dict],
             tasks: Optional[Sequence[str]] = None, min_files: int = 2) -> str:
  """The comparison of the `diagnose --out` `directories` (their results `loaded`) as markdown:
  a line per directory, then the `rows` (of `tasks` if given, held by `min_files` or more
  files) as a table."""
  names = column_names([r['meta'] for r in loaded])
  lines = ['# Diagnostics across settings', '',
           'Final held-out accuracy per run; the columns differ only in the settings named.', '']
  for directory, name, results in zip(directories, names, loaded):
    lines.append(f'- `{name}`: {directory} ({len(results["runs"])} runs)')
  lines.append('')
  header = ['run'] + [f'`{n}`' for n in names] + ['best', f'solved (>= {claims.SOLVED})']
  body = [[run_id] + [report.accuracy(a) for a in accuracies]
          + ['-' if best is None else f'`{names[best]}`', f'{solved} of {ran}']
          for run_id, accuracies, best, solved, ran in rows([r['runs'] for r in loaded], tasks,
                                                            min_files)]
  return '\n'.join(lines + report.table(header, body)) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = flags.compare()
  args = parser.parse_args(argv)
  directories, loaded = [], []
  for directory in args.directories:
    results = results_file.load(os.path.join(directory, 'results.json'))
    cells = [] if results is not None else results_file.grid_directories(directory)
    if results is None and not cells:
      parser.error(f'{directory} has no results.json(.gz) and is no grid: give '
                   '`synth-jax diagnose --out` directories.')
    for found in cells or [directory]:  # a grid: each setting and seed is a column
      directories.append(found)
      loaded.append(results if not cells else
                    results_file.load(os.path.join(found, 'results.json')))
  if len(directories) < 2:
    parser.error('give at least two results directories (or a grid) to compare.')
  tasks = [t.strip() for t in (args.tasks or '').split(',') if t.strip()]
  unknown = [t for t in tasks if t not in report.TASK_TITLES]
  if unknown:
    parser.error(f'unknown task {unknown[0]!r}; tasks: {", ".join(report.TASK_TITLES)}.')
  text = markdown(directories, loaded, tasks, min_files=1 if args.all_runs else 2)
  if args.out:
    with open(args.out, 'w') as f:
      f.write(text)
    print(f'wrote {args.out}')
  else:
    print(text, end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
