"""Writes a device work queue: one line per diagnostic run not yet in its results file.

Each line is `OUT_SUBDIR ARGS...` for `python -m synth_jax.diagnostics.run --preset full
--jobs_per_part 1 --skip_done --no-draw --out WORK/OUT_SUBDIR ARGS... --part N`, in the order
given below (the most wanted runs first: a call that runs out of time leaves the tail).
Usage: python results/h200-full-2026-12-01/make_queue.py > queue.txt
"""
import os
import subprocess
import sys

from synth_jax.diagnostics import results_file

HERE = os.path.dirname(os.path.abspath(__file__))
ALL = ('vanilla,random,fixed_random,dense,random+vanilla,orthogonal,frozen_gaussian,cosine,'
       'neg_l2,hyperbolic,linear,rotary,topk')
SWEPT = 'vanilla,random,orthogonal,frozen_gaussian,neg_l2,linear'
UNSWEPT = 'fixed_random,dense,random+vanilla,cosine,hyperbolic,rotary,topk'

VANILLA_INDUCTION = '--no-sweeps --tasks induction --attention vanilla'

# (results subdirectory, arguments, job-id filter) in priority order. Call 3 ran the rate probe
# and part of the sweeps; call 4 adds probes of vanilla's induction failure, then seeds 1 and 2;
# call 5 gives frozen QK (then topk and linear) three times the steps.
REQUESTS = [
    ('rate-2e-3', f'--no-sweeps --tasks mqar,induction --attention {ALL} --learning_rate 2e-3',
     None),
    ('rate-1e-3', f'--no-sweeps --tasks mqar,induction --attention {ALL} --learning_rate 1e-3',
     None),
    ('probe-vanilla-positions-none', f'{VANILLA_INDUCTION} --positions none', None),
    ('probe-vanilla-positions-none-2e-3',
     f'{VANILLA_INDUCTION} --positions none --learning_rate 2e-3', None),
    ('probe-vanilla-sinusoidal', f'{VANILLA_INDUCTION} --positions sinusoidal', None),
    ('steps-6000-rate-2e-3', f'{VANILLA_INDUCTION} --steps 6000 --learning_rate 2e-3', None),
    ('steps-6000-rate-2e-3', '--no-sweeps --tasks mqar,induction --attention '
     'vanilla,orthogonal,frozen_gaussian --steps 6000 --learning_rate 2e-3', None),
    ('full', f'--tasks mqar --attention {UNSWEPT}', lambda job: 'width' not in job),
    ('full', f'--tasks mqar --attention {ALL}', lambda job: 'width=64' in job),
    ('full', f'--tasks mqar --attention {UNSWEPT}', lambda job: 'width=32' in job),
    ('full', f'--tasks mqar --attention {ALL}', lambda job: 'width=256' in job),
    ('seed1', f'--no-sweeps --tasks mqar,induction --attention {ALL} --seed 1', None),
    ('seed2', f'--no-sweeps --tasks mqar,induction --attention {ALL} --seed 2', None),
    ('steps-6000-rate-2e-3', '--no-sweeps --tasks mqar,induction --attention topk,linear '
     '--steps 6000 --learning_rate 2e-3', None),
]


def recorded(subdir: str) -> set:
  results = results_file.load(os.path.join(HERE, subdir, 'results.json'))
  return set(results['runs']) if results else set()


def main():
  seen = set()
  for subdir, args, keep in REQUESTS:
    plan = subprocess.run(
        [sys.executable, '-m', 'synth_jax.diagnostics.run', '--preset', 'full',
         '--jobs_per_part', '1', '--plan', '--out', '/tmp/unused', *args.split()],
        capture_output=True, text=True, check=True).stdout
    done = recorded(subdir)
    for line in plan.splitlines():  # "part N/M: JOB"
      number, job = line.split(':', 1)
      number, job = number.split()[1].split('/')[0], job.strip()
      if (keep is None or keep(job)) and job not in done and (subdir, job) not in seen:
        seen.add((subdir, job))
        print(f'{subdir} {args} --part {number}')


if __name__ == '__main__':
  main()
