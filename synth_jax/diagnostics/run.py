"""`synth-jax diagnose`: train every (task setting, attention variant) of a preset, then report.

  synth-jax diagnose --preset tiny --tasks mqar,induction --attention vanilla,fixed_random \\
      --out /tmp/diag
  synth-jax diagnose --preset full --tasks mqar --attention vanilla,random --out DIR --part 2

The runs of a preset are planned in a fixed order (task, setting, variant) and cut into parts of
`Preset.jobs_per_part`; `--part N` (1-based) runs one part, `--plan` lists them. Runs land in
`DIR/results.json` after each one, merged with what earlier parts left there, and `report.md`
and the PNGs are redrawn from the whole file at the end of every call (unless `--no-draw`; then
`--report_only` draws them once at the end). Parts may also run at the same time on one --out
(`results_file.py` locks the file), e.g. four processes on one GPU:

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

import jax

from synth_jax.attention import kernels
from synth_jax.diagnostics import extrapolation
from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import plots
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import report
from synth_jax.diagnostics import results_file
from synth_jax.diagnostics import statistics
from synth_jax.diagnostics import tasks as tasks_lib
from synth_jax.diagnostics import train as train_lib

STATISTICS_EXAMPLES = 8
# Groups a finished run serves without measuring anything more (`--skip_done` adds them).
TAG_ONLY_GROUPS = ('base', 'kv_pairs', 'width')


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run: `task` learned by `variant` at model `width`; `groups` are the tables
  and plots it belongs to ('base', 'extrapolation', 'kv_pairs', 'width')."""
  id: str
  task: tasks_lib.Task
  variant: str
  width: int
  groups: tuple


def plan(preset: presets.Preset, task_names: Sequence[str], variants: Sequence[str]) -> list[Job]:
  """Every run the request needs, in order. Runs are named by what they train, so one run serves
  every group that asks for the same training: a sweep point equal to the base setting, or the
  extrapolation task when it is a requested task's setting."""
  jobs = {}
  base_width = preset.model['width']

  def add(task, width, group, tags):
    for variant in variants:
      job_id = '/'.join([task.name, *tags, variant])
      groups = jobs[job_id].groups + (group,) if job_id in jobs else (group,)
      jobs[job_id] = Job(job_id, task, variant, width, groups)

  def tags(task, base):
    """What sets `task` apart from `base`, e.g. ['kv=8'] (the run's name)."""
    differs = [(short, getattr(task, field)) for field, short in
               (('length', 'length'), ('vocab_size', 'vocab'))
               if getattr(task, field) != getattr(base, field)]
    differs += [('kv' if k == 'num_kv_pairs' else k, v) for k, v in task.options
                if dict(base.options).get(k) != v]
    return [f'{k}={v}' for k, v in differs]

  for name in task_names:
    task = preset.tasks[name]
    base = preset.tasks.get(task.name, task)
    add(task, base_width, 'extrapolation' if name == 'extrapolation' else 'base', tags(task, base))
    if name != 'mqar':
      continue
    for n in preset.kv_pairs_sweep:
      point = dataclasses.replace(task, options={'num_kv_pairs': n})
      add(point, base_width, 'kv_pairs', tags(point, task))
    for width in preset.width_sweep:
      point = dataclasses.replace(task, options={'num_kv_pairs': preset.width_sweep_kv_pairs})
      add(point, width, 'width',
          tags(point, task) + ([] if width == base_width else [f'width={width}']))
  return list(jobs.values())


def parts(preset: presets.Preset, jobs: list[Job]) -> list[list[Job]]:
  size = preset.jobs_per_part or len(jobs) or 1
  return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def measure_statistics(model, variables, task: tasks_lib.Task, seed: int) -> dict:
  """Per layer, entropy and head similarity of the trained model's attention on a few held-out
  examples; the spectra of its query/key projections (`statistics.py`)."""
  batch = task.generate(train_lib.stream(seed, train_lib.EVAL_STREAM), STATISTICS_EXAMPLES)
  maps = model_lib.attention_probabilities(model, variables, batch['inputs'])
  return {'attention': statistics.attention_statistics(maps)['layers'],
          'projections': statistics.projection_spectra(
              variables['params'], variables.get('frozen'), model.config.num_heads)}


def run_job(job: Job, preset: presets.Preset, seed: int, execution: str, label: str) -> dict:
  config = model_lib.ModelConfig(
      vocab_size=job.task.vocab_size, attention=job.variant, max_length=job.task.length,
      **{**preset.model, 'width': job.width})
  model = model_lib.DecoderLM(config, attention_execution=execution)
  record, variables = train_lib.train(model, job.task, preset.train, seed, label=label)
  if 'extrapolation' in job.groups:
    record['extrapolation'] = extrapolation.evaluate_lengths(
        model, variables, job.task, seed, preset.train, preset.extrapolation_factors)
  record['statistics'] = measure_statistics(model, variables, job.task, seed)
  record['job'] = {'task': job.task.name, 'variant': job.variant,
                   'width': job.width, 'length': job.task.length,
                   'vocab_size': job.task.vocab_size, 'options': dict(job.task.options),
                   'groups': list(job.groups)}
  return statistics.as_json(record)


def metadata(preset: presets.Preset, seed: int, execution: str) -> dict:
  device = jax.devices()[0]
  return statistics.as_json({
      'preset': preset.name, 'seed': seed, 'model': preset.model,
      'train': dataclasses.asdict(preset.train), 'attention_execution': execution,
      'extrapolation_factors': preset.extrapolation_factors,
      'device': f'{device.platform}: {device.device_kind}', 'jax': jax.__version__,
  })


def draw(results: dict, out: str) -> str:
  """Writes the plots and report.md of `results` into `out`; says what it wrote."""
  images = plots.write(results, out)
  return f'{report.write(results, out, images)} and {len(images)} plots'


def parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='synth-jax diagnose', description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default=','.join(tasks_lib.TASKS),
                      help=f'comma-separated, of: {", ".join(tasks_lib.TASKS)}.')
  parser.add_argument('--attention', required=True,
                      help='comma-separated registry names, e.g. vanilla,random,random+vanilla.')
  parser.add_argument('--preset', default='tiny', choices=sorted(presets.PRESETS))
  parser.add_argument('--part', type=int, default=None, help='run only part N (1-based).')
  parser.add_argument('--plan', action='store_true', help='list the parts and exit.')
  parser.add_argument('--report_only', action='store_true',
                      help='redraw report.md and the plots from DIR/results.json; train nothing.')
  parser.add_argument('--out', required=True, help='directory of results.json, report.md, PNGs.')
  parser.add_argument('--draw', action=argparse.BooleanOptionalAction, default=True,
                      help='write report.md and the plots when done (--no-draw: many small parts '
                           'at once leave them to one --report_only at the end).')
  parser.add_argument('--skip_done', action='store_true',
                      help='keep runs already in DIR/results.json for the same tables (finish a '
                      'part cut short); a recorded run also serves a sweep point equal to it.')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--positions', default=None, choices=model_lib.POSITIONS,
                      help="position scheme (default: the preset's).")
  parser.add_argument('--conv_kernel', type=int, default=None,
                      help="short convolution taps, 0 for none (default: the preset's).")
  parser.add_argument('--fold_query_scale', action=argparse.BooleanOptionalAction, default=None,
                      help="T5's 1/sqrt(head_dim) in the query kernel's init instead of the "
                           "logits, for dot-product variants (default: the preset's, off).")
  parser.add_argument('--learning_rate', type=float, default=None,
                      help="peak learning rate of every run (default: the preset's).")
  parser.add_argument('--steps', type=int, default=None,
                      help="training steps of every run (default: the preset's).")
  parser.add_argument('--sweeps', action=argparse.BooleanOptionalAction, default=True,
                      help="MQAR's kv-pair and width sweeps (--no-sweeps: base settings only).")
  parser.add_argument('--jobs_per_part', type=int, default=None,
                      help="runs per --part (default: the preset's).")
  parser.add_argument('--attention_execution', default='fast', choices=kernels.EXECUTIONS,
                      help='how attention runs, as network.Transformer.attention_execution.')
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse(argv)
  preset = presets.get(args.preset, positions=args.positions, conv_kernel=args.conv_kernel,
                       fold_query_scale=args.fold_query_scale)
  training = {k: v for k, v in (('learning_rate', args.learning_rate), ('steps', args.steps))
              if v is not None}
  preset = dataclasses.replace(
      preset, train=dataclasses.replace(preset.train, **training),
      jobs_per_part=preset.jobs_per_part if args.jobs_per_part is None else args.jobs_per_part,
      **({} if args.sweeps else {'kv_pairs_sweep': (), 'width_sweep': ()}))
  task_names = [t.strip() for t in args.tasks.split(',') if t.strip()]
  unknown = [t for t in task_names if t not in tasks_lib.TASKS]
  if unknown:
    raise SystemExit(f'unknown task {unknown[0]!r}; tasks: {", ".join(tasks_lib.TASKS)}.')
  variants = [v.strip() for v in args.attention.split(',') if v.strip()]
  for variant in variants:
    model_lib.ModelConfig(vocab_size=8, attention=variant)  # unknown names fail before training
  all_parts = parts(preset, plan(preset, task_names, variants))
  if args.plan:
    for i, part in enumerate(all_parts, 1):
      print(f'part {i}/{len(all_parts)}: ' + ', '.join(job.id for job in part))
    return 0
  if args.part is not None and not 1 <= args.part <= len(all_parts):
    raise SystemExit(f'--part {args.part}: this request has parts 1..{len(all_parts)}.')
  chosen = all_parts[args.part - 1] if args.part else [j for part in all_parts for j in part]

  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, 'results.json')
  meta = metadata(preset, args.seed, args.attention_execution)
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
  for i, job in enumerate(chosen, 1):
    label = f'[{i}/{len(chosen)}] {job.id}'
    if args.skip_done and results_file.reuse_recorded_run(path, meta, job.id, job.groups,
                                                          TAG_ONLY_GROUPS):
      print(f'{label}: already in {path}, kept', flush=True)
      continue
    started = time.perf_counter()
    record = run_job(job, preset, args.seed, args.attention_execution, label)
    results_file.update(path, meta, runs={job.id: record})
    print(f'{label}: final accuracy {record["final_accuracy"]:.3f} ({record["seconds"]:.0f} s '
          f'in the training loop, {time.perf_counter() - started:.0f} s in all)', flush=True)
  if not args.draw:
    print(f'wrote {path}')
    return 0
  with results_file.locked(path):  # parts finishing together draw in turn, from the whole file
    written = draw(results_file.read(path, meta), args.out)
  print(f'wrote {path}, {written}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
