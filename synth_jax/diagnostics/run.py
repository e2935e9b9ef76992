"""`synth-jax diagnose`: train every (task setting, attention variant) of a preset, then report.

  synth-jax diagnose --preset tiny --tasks mqar,induction --attention vanilla,fixed_random \\
      --out /tmp/diag
  synth-jax diagnose --preset full --tasks mqar --attention vanilla,random --out DIR --part 2

The runs of a preset are planned in a fixed order (task, setting, variant) and cut into parts of
`Preset.jobs_per_part`; `--part N` (1-based) runs one part, `--plan` lists them. Runs land in
`DIR/results.json` after each one, merged with what earlier parts left there, and `report.md`
and the PNGs are redrawn from the whole file at the end of every call (unless `--no-draw`; then
`--report_only` draws them once at the end), with `results.csv`: one row per run (variant, task,
setting, seed, final accuracy, steps to 90%, chance) for pandas or a spreadsheet. A run prints a
line per chunk of steps with its time left (a status line rewritten in place on a terminal,
plain lines in a log), then its accuracy and the request's runs done and time left. Parts may
also run at the same time on one --out (`results_file.py` locks the file), e.g. four processes
on one GPU:

  for p in 1 2 3 4; do XLA_PYTHON_CLIENT_MEM_FRACTION=0.2 synth-jax diagnose --preset full \
      --attention vanilla,random --out DIR --part $p & done; wait
"""
import argparse
import dataclasses
import datetime
import os
import sys
import time
from typing import Optional, Sequence

from synth_jax import progress
from synth_jax.diagnostics import flags
from synth_jax.diagnostics import grid as grid_lib
from synth_jax.diagnostics import jobs
from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import plots
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import report
from synth_jax.diagnostics import results_file
from synth_jax.diagnostics import tasks as tasks_lib

def draw(results: dict, out: str) -> str:
  """Writes the plots, report.md and results.csv of `results` into `out`; says what it wrote."""
  images = plots.write(results, out)
  table = report.write_csv(report.csv_rows(results, results['meta']['seed']), out)
  return f'{report.write(results, out, images)}, {table} and {len(images)} plots'


def parse(argv: Sequence[str]) -> argparse.Namespace:
  return flags.diagnose().parse_args(argv)


def task_list(text: Optional[str], default: Sequence[str]) -> list[str]:
  names = [t.strip() for t in text.split(',') if t.strip()] if text else list(default)
  unknown = [t for t in names if t not in tasks_lib.TASKS]
  if unknown:
    raise SystemExit(f'unknown task {unknown[0]!r}; tasks: {", ".join(tasks_lib.TASKS)}.')
  return names


def variant_list(text: str) -> list[str]:
  variants = [v.strip() for v in text.split(',') if v.strip()]
  for variant in variants:
    model_lib.ModelConfig(vocab_size=8, attention=variant)  # unknown names fail before training
  return variants


# Flags a grid sets itself, per setting: giving one with a grid is a mistake, not an override.
GRID_AXES = ('seed', 'positions', 'learning_rate')


def main_grid(args: argparse.Namespace, argv: Sequence[str]) -> int:
  """`diagnose --preset <grid>` (`grid.py`)."""
  grid = grid_lib.GRIDS[args.preset]
  given = [f'--{name}' for name in GRID_AXES if getattr(args, name) is not None]
  if given:
    raise SystemExit(f'{", ".join(given)}: grid {grid.name} sets that per setting '
                     f'(grid.GRIDS); drop the flag or use --preset {grid.preset}.')
  overrides = {k: v for k, v in (('steps', args.steps), ('batch_size', args.batch_size),
                                 ('conv_kernel', args.conv_kernel),
                                 ('fold_query_scale', args.fold_query_scale)) if v is not None}
  grid = dataclasses.replace(
      grid, tasks=tuple(task_list(args.tasks, grid.tasks)), overrides=tuple(overrides.items()),
      groups_per_part=grid.groups_per_part if args.jobs_per_part is None else args.jobs_per_part)
  if args.report_only:
    print(f'wrote {grid_lib.verdicts.write(args.out)}')
    return 0
  return grid_lib.run(grid, variant_list(args.attention), args.out, argv, args.part, args.plan,
                      args.skip_done, args.attention_execution, args.draw)


def run_jobs(chosen: Sequence[jobs.Job], preset: presets.Preset, args: argparse.Namespace,
             path: str, meta: dict):
  """Trains `chosen` in order, each recorded in `path` as it ends; a line per run ends with the
  request's progress (runs trained of those to train, the time left at the rate so far)."""
  started, trained = time.perf_counter(), 0
  for i, job in enumerate(chosen, 1):
    label = f'[{i}/{len(chosen)}] {job.id}'
    if args.skip_done and results_file.reuse_recorded_run(path, meta, job.id, job.groups,
                                                          jobs.TAG_ONLY_GROUPS):
      progress.show(f'{label}: already in {path}, kept')
      continue
    run_started = time.perf_counter()
    record = jobs.run_job(job, preset, args.seed, args.attention_execution, label)
    results_file.update(path, meta, runs={job.id: record})
    trained += 1
    now = time.perf_counter()
    request = progress.eta(now - started, trained, trained + len(chosen) - i)
    progress.show(f'{label}: final accuracy {record["final_accuracy"]:.3f} '
                  f'({record["seconds"]:.0f} s in the training loop, {now - run_started:.0f} s '
                  f'in all); request runs {request}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse(argv)
  if args.preset in grid_lib.GRIDS:
    return main_grid(args, argv)
  args.seed = args.seed or 0
  preset = presets.get(args.preset, positions=args.positions, conv_kernel=args.conv_kernel,
                       fold_query_scale=args.fold_query_scale)
  training = {k: v for k, v in (('learning_rate', args.learning_rate), ('steps', args.steps),
                                ('batch_size', args.batch_size)) if v is not None}
  preset = dataclasses.replace(
      preset, train=dataclasses.replace(preset.train, **training),
      jobs_per_part=preset.jobs_per_part if args.jobs_per_part is None else args.jobs_per_part,
      **({} if args.sweeps else {'kv_pairs_sweep': (), 'width_sweep': ()}))
  task_names = task_list(args.tasks, tasks_lib.TASKS)
  variants = variant_list(args.attention)
  all_parts = jobs.parts(preset, jobs.plan(preset, task_names, variants))
  if args.plan:
    for i, part in enumerate(all_parts, 1):
      print(f'part {i}/{len(all_parts)}: ' + ', '.join(job.id for job in part))
    return 0
  if args.part is not None and not 1 <= args.part <= len(all_parts):
    raise SystemExit(f'--part {args.part}: this request has parts 1..{len(all_parts)}.')
  chosen = all_parts[args.part - 1] if args.part else [j for part in all_parts for j in part]

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'results.json')
  meta = jobs.metadata(preset, args.seed, args.attention_execution)
  command = {'argv': ['synth-jax', 'diagnose', *argv],
             'date': datetime.datetime.now().isoformat(timespec='seconds'),
             'device': meta['device']}
  if args.report_only:  # redraw from the file as it is (a .gz stays the only copy)
    with results_file.locked(path):
      results = results_file.read(path, meta)
    print(f'wrote {draw(results, args.out)}')
    return 0
  results_file.update(path, meta, command=command)  # a wrong --out fails before any training
  where = f'part {args.part}/{len(all_parts)}, ' if args.part else ''
  print(f'diagnose: {where}{len(chosen)} runs, preset {preset.name}, seed {args.seed}', flush=True)
  run_jobs(chosen, preset, args, path, meta)
  if not args.draw:
    print(f'wrote {path}')
    return 0
  with results_file.locked(path):  # parts finishing together draw in turn, from the whole file
    written = draw(results_file.read(path, meta), args.out)
  print(f'wrote {path}, {written}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
