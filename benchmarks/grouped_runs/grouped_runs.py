"""Runs per minute: the runs of one grid group trained one by one, then as one program.

  python benchmarks/grouped_runs/grouped_runs.py --preset tiny --attention vanilla --task mqar \
      --seeds 0,1,2 --rates 6e-3,3e-3

"Alone" trains each (seed, rate) with `train.train`, compiling its own program as a fresh
`synth-jax diagnose` process does without a shared compilation cache; "grouped" trains them all
with `train.train_group` (`grid.py`). Both wall times include compiling and the held-out
evaluations; the final accuracies are printed so the two can be seen to agree.
"""
import argparse
import dataclasses
import time

import jax

from synth_jax.diagnostics import jobs
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import train


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='tiny')
  parser.add_argument('--attention', default='vanilla')
  parser.add_argument('--task', default='mqar')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--rates', default='6e-3,3e-3')
  parser.add_argument('--steps', type=int, default=None)
  args = parser.parse_args()
  preset = presets.get(args.preset)
  if args.steps:
    preset = dataclasses.replace(preset, train=dataclasses.replace(preset.train, steps=args.steps))
  runs = [train.Run(int(s), float(r)) for r in args.rates.split(',') for s in args.seeds.split(',')]
  job = jobs.Job(f'{args.task}/{args.attention}', preset.tasks[args.task], args.attention,
                 preset.model['width'], ('base',))
  model = jobs.build_model(job, preset.model, 'fast')
  quiet = lambda line: None
  print(f'device {jax.devices()[0].device_kind}, preset {preset.name}, {job.id}, '
        f'{len(runs)} runs of {preset.train.steps} steps', flush=True)

  started = time.perf_counter()
  alone = []
  for run in runs:
    cfg = dataclasses.replace(preset.train, learning_rate=run.learning_rate)
    alone.append(train.train(model, job.task, cfg, run.seed, log=quiet)[0]['final_accuracy'])
  alone_s = time.perf_counter() - started

  started = time.perf_counter()
  records, _ = train.train_group(model, job.task, preset.train, runs, log=quiet)
  grouped_s = time.perf_counter() - started

  print('final accuracy alone:   ' + ' '.join(f'{a:.3f}' for a in alone))
  print('final accuracy grouped: ' + ' '.join(f'{r["final_accuracy"]:.3f}' for r in records))
  for name, seconds in (('alone', alone_s), ('grouped', grouped_s)):
    print(f'{name:8s} {seconds:7.1f} s  {60 * len(runs) / seconds:6.1f} runs a minute')
  print(f'speed-up {alone_s / grouped_s:.2f}x')


if __name__ == '__main__':
  main()
