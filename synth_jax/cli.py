"""`synth-jax COMMAND` (train, eval, infer, params, diagnose...): T5X-style flags over gin.

  synth-jax train --gin_file=configs/demo.gin --gin.MODEL_DIR="'/tmp/demo'"
  synth-jax train --gin_file=configs/c4_pretrain_base.gin --gin.ATTENTION_TYPE="'random'" ...
  synth-jax eval  --gin.MODEL_DIR="'/tmp/demo'"      (a run's MODEL_DIR remembers its config)
  synth-jax infer --gin.MODEL_DIR="'/tmp/demo'" --examples=4
  synth-jax train ... --coordinator_address=HOST:PORT --num_processes=2 --process_id=0
                                 (one process of several; `--multihost` on TPU slices)
  synth-jax params [attention types...]
  synth-jax diagnose --preset tiny --tasks mqar,induction --attention vanilla,random --out DIR
  synth-jax diagnose-compare DIR DIR ...   (one table of runs across rates, seeds, ...)
  synth-jax attention-maps ...   (a trained run's per-layer, per-head attention maps as PNG)
  synth-jax bench --types vanilla,random   (training-step time per attention type; see --help)

`--gin_file` may repeat; `--gin.NAME=VALUE` binds a macro or parameter (VALUE is gin syntax, so
strings keep their quotes). Gin files are looked up in the working directory, then in the
repository's `configs/` and `gin/` directories.
"""
import argparse
import importlib
import os
import sys
import traceback
from typing import Optional, Sequence

from synth_jax import collector
from synth_jax import gin_flags
from synth_jax import lease as lease_lib
from synth_jax import multihost
from synth_jax import preflight
from synth_jax import quiet_tensorflow

# Commands with their own flags: `main(argv)` of the module, imported only when called, after
# the flags have been parsed by the parser `module:function` builds without jax (so help and
# flag mistakes answer at once; `main` parses them again).
SUBCOMMANDS = {
    'diagnose': ('synth_jax.diagnostics.run', 'synth_jax.diagnostics.flags:diagnose'),
    'attention-maps': ('synth_jax.diagnostics.attention_maps',
                       'synth_jax.diagnostics.flags:attention_maps'),
    'diagnose-compare': ('synth_jax.diagnostics.compare', 'synth_jax.diagnostics.flags:compare'),
    'bench': ('synth_jax.bench', 'synth_jax.benchmark.flags:parser'),
}
GIN_SUBCOMMANDS = ('attention-maps',)  # those that take --gin.NAME=VALUE flags


# The commands this module runs, with their one-line help.
COMMANDS = {
    'train': 'train a T5 model, or resume the run in MODEL_DIR',
    'eval': "evaluate MODEL_DIR's latest checkpoint (loss, accuracy, task metrics)",
    'infer': "greedy-decode eval examples with MODEL_DIR's latest checkpoint",
    'params': 'the parameter count of attention types at T5 shapes',
}
SUBCOMMAND_HELP = {
    'diagnose': 'what each attention can learn: synthetic tasks, sweeps, robustness grids',
    'attention-maps': "a trained run's attention maps as PNG, with statistics",
    'diagnose-compare': 'one table of diagnostics runs across settings',
    'bench': 'training-step time and memory per attention type',
}
DEBUG_VARIABLE = 'SYNTH_JAX_DEBUG'


def parser() -> argparse.ArgumentParser:
  """`synth-jax [--debug] COMMAND ...`, each of train|eval|infer|params with its own help."""
  top = argparse.ArgumentParser(
      prog='synth-jax', description=__doc__.split('\n')[0], epilog=gin_flags.HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  top.add_argument('--debug', action='store_true',
                   help=f'show the traceback of an error (or set {DEBUG_VARIABLE}=1).')
  commands = top.add_subparsers(dest='command', required=True, metavar='COMMAND')
  for name, summary in COMMANDS.items():
    command = commands.add_parser(name, help=summary, description=summary,
                                  epilog=None if name == 'params' else gin_flags.HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    if name == 'params':
      command.add_argument('types', nargs='*', help='attention types (default: every one).')
      continue
    gin_flags.add_flags(command)
    command.add_argument('--tfds_data_dir', default=None,
                         help='TFDS data directory (e.g. gs://bucket/tfds) for C4/GLUE tasks.')
    _add_multihost_flags(command)
    if name == 'infer':
      command.add_argument('--examples', type=int, default=8, help='examples to decode.')
  for name, summary in SUBCOMMAND_HELP.items():  # listed here; they parse their own flags
    commands.add_parser(name, help=f'{summary} ({name} --help)', add_help=False)
  return top


def _add_multihost_flags(command: argparse.ArgumentParser):
  """Flags that join this process to the others of a multi-process run (`multihost.py`)."""
  group = command.add_argument_group(
      'several processes (multi-host TPU slices; several processes on one machine)')
  group.add_argument('--multihost', action='store_true',
                     help='call jax.distributed.initialize(), which discovers the processes '
                     '(multi-host TPU slices; implied when TPU_WORKER_HOSTNAMES lists several).')
  group.add_argument('--coordinator_address', metavar='HOST:PORT',
                     help=f'process 0\'s host and a free port ({multihost.ADDRESS_VARIABLE}); '
                     'with the next two, joins the processes anywhere, e.g. 127.0.0.1:8476.')
  group.add_argument('--num_processes', metavar='N',
                     help=f'how many processes run ({multihost.PROCESSES_VARIABLE}).')
  group.add_argument('--process_id', metavar='I',
                     help=f'this process, 0 .. N-1 ({multihost.PROCESS_ID_VARIABLE}).')
  group.add_argument('--heartbeat_timeout_s', metavar='S',
                     help='a process silent this long is dead and every process stops (default '
                     f'{multihost.DEFAULT_HEARTBEAT_TIMEOUT_S}).')


def _coordination(args) -> Optional[multihost.Coordination]:
  """How this process joins the others (None: alone); a bad or missing value raises."""
  return multihost.coordination(args.coordinator_address, args.num_processes, args.process_id,
                                args.heartbeat_timeout_s,
                                discover=args.multihost or _is_multihost_tpu())


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs a command; returns the process exit status: 0, or 2 for a user mistake, which is
  printed as one line (its traceback with --debug or SYNTH_JAX_DEBUG=1)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = '--debug' in argv or os.environ.get(DEBUG_VARIABLE, '') not in ('', '0')
  argv = [arg for arg in argv if arg != '--debug']
  command = next((arg for arg in argv if not arg.startswith('-')), 'synth-jax')
  try:
    return _run(argv)
  except Exception as error:  # pylint: disable=broad-except  (sorted by _is_user_error)
    if multihost.joined():  # never wait at jax's exit barrier for a process that may be gone
      multihost.exit_at_once(_report_of_several(error, command, debug))
    if debug or not _is_user_error(error):
      raise
    print(f'synth-jax {command}: {one_line(error)}', file=sys.stderr, flush=True)
    return 2


def _report_of_several(error: BaseException, command: str, debug: bool) -> int:
  """Prints `error` of one process of several as `main` would (a lost peer named as such) and
  returns the exit status."""
  if multihost.is_lost_peer(error) and not debug:
    print(f'synth-jax {command}: {multihost.lost_peer_message(error)}', file=sys.stderr,
          flush=True)
    return multihost.LOST_PEER_STATUS
  if debug or not _is_user_error(error):
    traceback.print_exception(error)
    return 1
  print(f'synth-jax {command}: {one_line(error)}', file=sys.stderr, flush=True)
  return 2


def _run(argv: list[str]) -> int:
  if argv and argv[0] in SUBCOMMANDS:
    main_module, flags = SUBCOMMANDS[argv[0]]
    flags_module, build = flags.split(':')
    arguments = gin_flags.split(argv[1:])[1] if argv[0] in GIN_SUBCOMMANDS else argv[1:]
    getattr(importlib.import_module(flags_module), build)().parse_args(arguments)
    with collector.paused():
      command = importlib.import_module(main_module)
    return command.main(argv[1:]) or 0
  bindings, argv = gin_flags.split(argv)
  args = parser().parse_args(argv)
  if args.command == 'params':
    from synth_jax.attention import param_count  # pylint: disable=g-import-not-at-top
    param_count.main(args.types)
    return 0
  joining = _coordination(args)
  if not args.gin_file and not gin_flags.names_model_dir(bindings):
    raise gin_flags.FlagError('give a --gin_file (e.g. configs/demo.gin), or --gin.MODEL_DIR of a '
                              'run that saved its config.gin.')
  gin_flags.check_files(args.gin_file, args.gin_search_paths)
  try:
    preflight.check(args.command, bindings)  # answers before anything heavy is imported
  except lease_lib.LeaseHeldError:
    if joining is None or not joining.process_id:  # processes 1, 2, ...: their process 0 may
      raise  # hold it already; it decides, and tells them (lease.py)
  with collector.paused():
    quiet_tensorflow.load()
    importlib.import_module('synth_jax.train')
  if joining is not None:
    multihost.initialize(joining)
  if args.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  saved = gin_flags.parse_run_config(args.gin_file, bindings, args.gin_search_paths)
  if not saved and not args.gin_file:
    raise preflight.PreflightError(
        'MODEL_DIR has no run to read (a config.gin and a checkpoint, written by synth-jax '
        "train): give the run's --gin_file.")
  if saved:
    print(f'Configuration: {saved} (the run\'s saved settings win over --gin_file files; '
          '--gin.NAME=VALUE wins over both).', flush=True)
  run_command(args.command, getattr(args, 'examples', 8))
  return 0


def run_command(command: str, examples: int):
  """`train` runs the gin-bound `train.train`; `eval` and `infer` run `train.evaluate` and
  `train.infer` on what gin binds to train's arguments (the run's one description)."""
  from synth_jax import train  # pylint: disable=g-import-not-at-top
  if command == 'train':
    train.train()
  elif command == 'eval':
    train.evaluate(**gin_flags.train_bindings_for(train.evaluate, 'synth-jax eval'))
  else:
    train.infer(**gin_flags.train_bindings_for(train.infer, 'synth-jax infer', examples=examples))


def one_line(error: BaseException) -> str:
  """The error's message on one line, without gin's "In call to configurable" notes."""
  lines = [line.strip() for line in str(error).splitlines()
           if line.strip() and not line.strip().startswith('In call to configurable')]
  return ' '.join(lines) or type(error).__name__


# Error classes of ours that are user mistakes, by module (checked only if the module was
# loaded: an error cannot come from a module that never ran, and importing data would load
# TensorFlow just to print a line).
_USER_ERRORS = {'synth_jax.checkpoints': ('CheckpointError',),
                'synth_jax.data': ('DataNotPreparedError',),
                'synth_jax.lease': ('LeaseHeldError', 'LeaseLostError')}


def _is_user_error(error: BaseException) -> bool:
  """Errors about the run's inputs (flags, gin, data, MODEL_DIR, checkpoints, lengths, names),
  which carry a message that names the fix: printed without a traceback."""
  kinds = [ValueError, TypeError, SyntaxError, FileNotFoundError, PermissionError,
           NotADirectoryError]
  for module, names in _USER_ERRORS.items():
    if module in sys.modules:
      kinds += [getattr(sys.modules[module], name) for name in names]
  return isinstance(error, tuple(kinds))


def _is_multihost_tpu() -> bool:
  """TPU VM slices list their workers in TPU_WORKER_HOSTNAMES; more than one means multi-host."""
  return len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


if __name__ == '__main__':
  sys.exit(main())
