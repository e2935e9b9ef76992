"""`synth-jax bench` (`python -m synth_jax.bench`): flags, a worker process per row, JSON, tables.

Each row runs in its own process by default (`--isolate`): the worker is this command again with
`--no-isolate` and one type, so peak memory is that row's alone and an out-of-memory row does not
take the others down. Definitions: tokens per step = batch x (inputs length + targets length),
padding included (the step computes on every position); the model FLOPs are the matmuls of the
step on attention's reference path (`flops.py`); `traced` counts the program the run executes.
`--profile DIR` adds device time by kernel.

The table's header comes first, then each row as it is measured with the rows done and the time
left; its FLOP columns are in the preset's unit (`FLOP_UNIT`: MFLOP for tiny). MFU needs the
device's peak (`flops.PEAK_TFLOPS`, or `--peak_tflops`); where none is known (CPUs) it is "-",
and a note under the closing table says so.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

from synth_jax import attention
from synth_jax import progress
from synth_jax.attention import registry
from synth_jax.benchmark import flags
from synth_jax.benchmark import report
from synth_jax.benchmark import runner

COMMAND = 'synth_jax.bench'
# The unit of the table's FLOP columns, fixed before any row is measured (the header comes
# first): a tiny step is about 80 MFLOP, which 'TFLOP' prints as 0.00 and 'GFLOP' as 0.08.
FLOP_UNIT = {'base': 'TFLOP', 'tiny': 'MFLOP'}
DEFAULT_TYPES = tuple(attention.names()) + ('random+vanilla',)


def parse_args(argv=None) -> argparse.Namespace:
  parser = flags.parser()
  args = parser.parse_args(argv)
  given = ','.join(DEFAULT_TYPES) if args.types is None else args.types
  args.types = [t.strip() for t in given.split(',') if t.strip()]
  for name in args.types:
    registry.members(name)  # unknown names fail here, with the list of valid ones
  if args.xla_flags and not args.isolate:
    parser.error('--xla_flags needs --isolate (XLA reads its flags once per process); for one '
                 'process set the XLA_FLAGS environment variable instead.')
  return args


def points(args) -> list[tuple[str, int, int]]:
  """(attention type, inputs length, batch size) of every row to measure."""
  shapes = runner.PRESETS[args.preset]
  length = args.inputs_length or shapes['inputs_length']
  batch = args.batch_size or shapes['batch_size']
  if not args.seq_sweep:
    return [(t, length, batch) for t in args.types]
  tokens = batch * length
  return [(t, length * f, max(1, tokens // (length * f))) for t in args.types for f in (1, 2, 4, 8)]


def worker_command(args, attention_type: str, length: int, batch: int, out: str) -> list[str]:
  """This command for one row in a worker process, writing its JSON to `out`."""
  command = [sys.executable, '-m', COMMAND, '--no-isolate', '--json', out,
             '--types', attention_type, '--preset', args.preset, '--batch_size', str(batch),
             '--inputs_length', str(length), '--steps', str(args.steps),
             '--warmup', str(args.warmup), '--seed', str(args.seed),
             '--model_parallelism', str(args.model_parallelism),
             '--pack' if args.pack else '--no-pack',
             '--init_on_host' if args.init_on_host else '--no-init_on_host']
  for flag in ('targets_length', 'attention_execution', 'peak_tflops', 'profile',
               'logits_matmul_dtype'):
    if getattr(args, flag) is not None:
      command += [f'--{flag}', str(getattr(args, flag))]
  return command


def run_in_subprocess(args, attention_type: str, length: int, batch: int,
                      lock: Optional[str] = None, xla_flags: Optional[str] = None) -> dict:
  """`runner.measure` in a fresh Python process (its own device memory and peak counter).

  lock: a file the `--jobs` workers take turns on (see `runner.device_lock`).
  xla_flags: the worker's `XLA_FLAGS` (None: ours).
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    env = dict(os.environ)
    if xla_flags is not None:
      env['XLA_FLAGS'] = xla_flags
    # JAX preallocates 75% of the GPU by default; a benchmark row may use nearly all of it.
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')
    if lock:
      # Waiting workers hold only their train state; none may reserve the memory up front.
      env.update({runner.LOCK_VARIABLE: lock, 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'})
    # The worker's own tables would repeat ours; its stderr (errors, warnings) comes through.
    result = subprocess.run(worker_command(args, attention_type, length, batch, out), env=env,
                            check=False, stdout=subprocess.DEVNULL)
    if result.returncode or not os.path.exists(out):
      return {'attention_type': attention_type, 'inputs_length': length, 'batch_size': batch,
              'attention_execution': args.attention_execution,
              'logits_matmul_dtype': args.logits_matmul_dtype,
              'xla_flags': env.get('XLA_FLAGS', ''), 'out_of_memory': False,
              'error': f'worker exited with status {result.returncode}'}
    with open(out) as f:
      return json.load(f)['rows'][0]


def run_point(args, attention_type: str, length: int, batch: int,
              lock: Optional[str] = None, xla_flags: Optional[str] = None) -> dict:
  """One row, halving the batch after each out-of-memory failure when `--halve_on_oom`."""
  tried = []
  while True:
    if args.isolate:
      row = run_in_subprocess(args, attention_type, length, batch, lock, xla_flags)
    else:
      row = runner.measure(
          attention_type, args.preset, batch, length, args.targets_length, args.steps,
          args.warmup, args.pack, attention_execution=args.attention_execution,
          peak_tflops=args.peak_tflops, seed=args.seed, profile_dir=args.profile,
          init_on_host=args.init_on_host, logits_matmul_dtype=args.logits_matmul_dtype,
          model_parallelism=args.model_parallelism)
    row['out_of_memory_batch_sizes'] = tried
    if not (row.get('out_of_memory') and args.halve_on_oom and batch // 2 >= 1):
      return row
    progress.show(f'{attention_type}: out of memory at batch {batch}; retrying at {batch // 2}')
    tried.append(batch)
    batch //= 2


def measure_rows(args, result: dict, unit: str):
  """Measures every row into `result['rows']`, printing each as it is done with the rows done,
  and the time left (on a terminal, a status line names the row being measured meanwhile);
  rewrites `--json` after every row, so a run cut short keeps what it measured."""
  lock = None
  if args.jobs > 1 and args.isolate:
    lock = os.path.join(tempfile.mkdtemp(), 'device.lock')
  todo = [(point, flags) for point in points(args) for flags in (args.xla_flags or [None])]
  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(args.jobs if lock else 1) as pool:
    futures = [pool.submit(run_point, args, *point, lock, flags) for point, flags in todo]
    # Rows in order, each reported once it and those before are done.
    for i, future in enumerate(futures):
      if progress.is_terminal():
        progress.show(f'measuring {todo[i][0][0]}: rows '
                      f'{progress.eta(time.perf_counter() - started, i, len(todo))}', keep=False)
      row = future.result()
      result['rows'].append(row)
      result['device_kind'] = result['device_kind'] or row.get('device_kind')
      timing = (f'  (init {row["init_s"]:.0f} s, compile {row["compile_s"]:.0f} s)'
                if 'compile_s' in row else '')
      done = progress.eta(time.perf_counter() - started, i + 1, len(todo))
      progress.show(report.results_line(row, unit) + timing + f'  [rows {done}]')
      if args.json:
        with open(args.json, 'w') as f:
          json.dump(result, f, indent=1)


def run(argv=None) -> dict:
  """Measures every row the flags ask for, printing each and the tables; returns the JSON's dict."""
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top (no device is touched in isolate mode)
  result = {
      'date': datetime.date.today().isoformat(),
      'command': f'python -m {COMMAND} ' + ' '.join(sys.argv[1:] if argv is None else argv),
      'device_kind': None, 'jax_version': jax.__version__, 'preset': args.preset,
      'pack': args.pack, 'attention_execution': args.attention_execution,
      'logits_matmul_dtype': args.logits_matmul_dtype,
      'xla_flags': args.xla_flags or os.environ.get('XLA_FLAGS', ''),
      'steps': args.steps, 'warmup': args.warmup, 'memory_per_row': args.isolate,
      'source_sha256': report.source_digests(), 'rows': []}
  unit = FLOP_UNIT.get(args.preset, 'TFLOP')
  print(report.results_header(unit), flush=True)  # the rows stream in under it
  measure_rows(args, result, unit)
  rows = result['rows']
  for row in rows:
    if row.get('profile'):
      print('\n' + report.profile_table(row))
  print('\nModel FLOPs per training step by part: the matmuls of the step traced with attention '
        'on its reference path.\n"traced": the dot_generals of the step as run, fast paths '
        'included, fused kernels\' custom calls not.')
  print(report.flops_table(rows))
  print('\n' + report.results_table(rows, unit))
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`synth-jax bench` / `python -m synth_jax.bench`: returns the exit status (0; a row that
  failed is a row of the table, with its error)."""
  run(argv)
  return 0


if __name__ == '__main__':
  sys.exit(main())
