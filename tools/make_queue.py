"""Writes a device work queue: one line per wanted diagnostic run its results file lacks.

  python tools/make_queue.py results/h200-full-2026-12-01/queue-requests.txt > queue.txt
  tools/queue.sh queue.txt results/h200-full-2026-12-01    # on the device, from the repo root

REQUESTS, a text file, lists the wanted runs in priority order (a call that runs out of time
leaves the tail). A line `SUBDIR JOBS ARGS...` asks for the jobs of `synth-jax diagnose --preset
full ARGS...` that JOBS keeps (`*` all, `TEXT` those whose job id contains TEXT, `!TEXT` those
without it); a line `NAME=VALUE` defines `$NAME` for the lines after it; `#` starts a comment.
SUBDIR is relative to `--results` (default: the directory of REQUESTS); a job already in
SUBDIR/results.json(.gz) is left out. Each printed line is `SUBDIR ARGS... --part N`, which
`tools/queue.sh` runs as `synth-jax diagnose --preset full --jobs_per_part 1 --skip_done
--no-draw --out WORK/SUBDIR ARGS... --part N`.
"""
import argparse
import os
import string
import subprocess
import sys

from synth_jax.diagnostics import results_file


def read_requests(path: str) -> list[tuple[str, str, str]]:
  """(subdir, job filter, arguments) of every request line of `path`, `$NAME`s substituted."""
  names, requests = {}, []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.split('#', 1)[0].strip()
      name, sep, value = line.partition('=')
      try:
        if sep and name.isidentifier():
          names[name] = string.Template(value).substitute(names)
        elif line:
          subdir, jobs, args = string.Template(line).substitute(names).split(None, 2)
          requests.append((subdir, jobs, args))
      except (KeyError, ValueError) as e:
        raise SystemExit(f'{path}:{number}: write SUBDIR JOBS ARGS... or NAME=VALUE, with '
                         f'every $NAME defined above ({type(e).__name__}: {e})') from None
  return requests


def keeps(jobs: str, job: str) -> bool:
  """Whether the filter `jobs` (`*`, `TEXT` or `!TEXT`) keeps the job id `job`."""
  if jobs == '*':
    return True
  if jobs.startswith('!'):
    return jobs[1:] not in job
  return jobs in job


def planned_parts(args: str, out: str) -> list[tuple[str, str]]:
  """(part number, job id) of every one-run part `synth-jax diagnose --plan` lists for `args`
  (for a grid, `--preset robust` in `args`: every one-group part not yet recorded in `out`)."""
  plan = subprocess.run(
      [sys.executable, '-m', 'synth_jax.diagnostics.run', '--preset', 'full',
       '--jobs_per_part', '1', '--plan', '--skip_done', '--out', out, *args.split()],
      capture_output=True, text=True, check=True).stdout
  parts = []
  for line in plan.splitlines():  # "part N/M: JOB", or "part N/M: GROUP (recorded)" of a grid
    number, job = line.split(':', 1)
    if not job.endswith(' (recorded)'):
      parts.append((number.split()[1].split('/')[0], job.strip()))
  return parts


def recorded(results_dir: str, subdir: str) -> set:
  results = results_file.load(os.path.join(results_dir, subdir, 'results.json'))
  return set(results['runs']) if results else set()


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python tools/make_queue.py', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('requests', help='the requests file (format above)')
  parser.add_argument('--results', help='the results directory the SUBDIRs are in (default: '
                                        'the directory of the requests file)')
  args = parser.parse_args(argv)
  results_dir = args.results or os.path.dirname(os.path.abspath(args.requests))
  seen = set()
  for subdir, jobs, arguments in read_requests(args.requests):
    done = recorded(results_dir, subdir)
    for number, job in planned_parts(arguments, os.path.join(results_dir, subdir)):
      if keeps(jobs, job) and job not in done and (subdir, job) not in seen:
        seen.add((subdir, job))
        print(f'{subdir} {arguments} --part {number}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
