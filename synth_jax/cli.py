"""`synth-jax COMMAND` (train, eval, infer, params, diagnose...): T5X-style flags over gin.

  synth-jax train --gin_file=configs/demo.gin --gin.MODEL_DIR="'/tmp/demo'"
  synth-jax train --gin_file=configs/c4_pretrain_base.gin --gin.ATTENTION_TYPE="'random'" ...
  synth-jax eval  --gin.MODEL_DIR="'/tmp/demo'"      (a run's MODEL_DIR remembers its config)
  synth-jax infer --gin.MODEL_DIR="'/tmp/demo'" --examples=4
  synth-jax params [attention types...]
  synth-jax diagnose --preset tiny --tasks mqar,induction --attention vanilla,random --out DIR
  synth-jax diagnose-compare DIR DIR ...   (one table of runs across rates, seeds, ...)
  synth-jax attention-maps ...   (a trained run's per-layer, per-head attention maps as PNG)

`--gin_file` may repeat; `--gin.NAME=VALUE` binds a macro or parameter (VALUE is gin syntax, so
strings keep their quotes). Gin files are looked up in the working directory, then in the
repository's `configs/` and `gin/` directories.
"""
import argparse
import importlib
import logging
import os
import pathlib
import sys
from typing import Optional, Sequence

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Commands with their own flags: `main(argv)` of the module, imported only when called.
SUBCOMMANDS = {
    'diagnose': 'synth_jax.diagnostics.run',
    'attention-maps': 'synth_jax.diagnostics.attention_maps',
    'diagnose-compare': 'synth_jax.diagnostics.compare',
}


def search_paths(extra: Sequence[str] = ()) -> list[str]:
  candidates = [os.getcwd(), *extra, REPO_ROOT, REPO_ROOT / 'configs', REPO_ROOT / 'gin']
  return [str(p) for p in candidates if os.path.isdir(p)]


class _QuietSearchMisses(logging.Filter):
  """Gin logs an error for every search path an include is not in; only the last miss matters."""

  def filter(self, record):
    return not record.getMessage().startswith('Path not found')


def parse_gin(gin_files: Sequence[str], bindings: Sequence[str], extra_paths: Sequence[str] = ()):
  """Parses gin files and `NAME=VALUE` bindings, with the repository's gin dirs searchable."""
  root = logging.getLogger()
  if not any(isinstance(f, _QuietSearchMisses) for f in root.filters):
    root.addFilter(_QuietSearchMisses())
  import synth_jax.train  # pylint: disable=g-import-not-at-top,unused-import  (registers configurables)
  for path in search_paths(extra_paths):
    gin.add_config_file_search_path(path)
  for name in gin_files:
    if not any(os.path.isfile(os.path.join(p, name)) for p in ['', *search_paths(extra_paths)]):
      raise SystemExit(f'gin file {name!r} not found in {search_paths(extra_paths)}.')
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)


def parse_run_config(gin_files: Sequence[str], bindings: Sequence[str],
                     extra_paths: Sequence[str] = ()) -> Optional[str]:
  """`parse_gin`, with the configuration a MODEL_DIR saved when its run started (`run_config`).

  Order, later wins: the --gin_file files, then MODEL_DIR/config.gin, then the --gin.NAME=VALUE
  bindings. So `synth-jax eval --gin.MODEL_DIR=...` evaluates the run as it was trained, and a
  flag still changes what it names. A MODEL_DIR without a checkpoint holds no run yet: its
  config.gin is ignored. Returns the saved config's path, or None if none was read.
  """
  parse_gin(gin_files, bindings, extra_paths)
  try:
    model_dir = gin.query_parameter('%MODEL_DIR')
  except ValueError:  # no MODEL_DIR macro: nothing remembered
    return None
  from synth_jax import run_config  # pylint: disable=g-import-not-at-top
  # Without a checkpoint there is no run to continue: a new one starts from its own gin files.
  saved = run_config.saved_config(model_dir) if run_config.has_checkpoint(model_dir) else None
  if saved:
    gin.clear_config()
    parse_gin(gin_files, [], extra_paths)
    # Read through gfile (MODEL_DIR may be gs://), then the flags on top.
    gin.parse_config(run_config.read_text(saved))
    gin.parse_config(list(bindings))
  return saved


def _split_gin_flags(argv: Sequence[str]):
  """Pulls `--gin.NAME=VALUE` out of argv (argparse cannot declare dotted flag families)."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise SystemExit(f'{arg!r}: write --gin.NAME=VALUE, e.g. --gin.ATTENTION_TYPE="\'random\'"')
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return bindings, rest


GIN_FLAGS_HELP = """gin flags (train, eval, infer, attention-maps):
  --gin_file=FILE          a gin file; repeat to combine (later files win)
  --gin.NAME=VALUE         bind a macro or parameter; VALUE is gin syntax, so strings keep
                           their quotes: --gin.ATTENTION_TYPE="'random'" --gin.TRAIN_STEPS=1000
                           --gin.MODEL_DIR="'/tmp/run'" --gin.train.model_parallelism=2

examples:
  synth-jax train --gin_file=configs/demo.gin --gin.MODEL_DIR="'/tmp/demo'"
  synth-jax eval  --gin.MODEL_DIR="'/tmp/demo'"   (reads /tmp/demo/config.gin, saved by train)
  synth-jax diagnose --help
"""


def _import_tensorflow_quietly():
  """TensorFlow serves only our input pipeline. At import and when it probes for a GPU it prints
  C++ notices (oneDNN, CPU features, missing CUDA drivers) that no user can act on; import it
  with stderr silenced, and keep it off GPUs, which belong to JAX. An import error still raises
  (after stderr is back)."""
  if 'tensorflow' in sys.modules:
    return
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs a command; returns the process exit status (0)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  _import_tensorflow_quietly()
  if argv and argv[0] in SUBCOMMANDS:
    return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:]) or 0
  bindings, argv = _split_gin_flags(argv)
  parser = argparse.ArgumentParser(
      prog='synth-jax', description=__doc__.split('\n')[0], epilog=GIN_FLAGS_HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('command', choices=['train', 'eval', 'infer', 'params', *SUBCOMMANDS],
                      help='diagnose, diagnose-compare and attention-maps take their own flags '
                           '(COMMAND --help).')
  parser.add_argument('--examples', type=int, default=8, help='examples `infer` decodes.')
  parser.add_argument('--gin_file', action='append', default=[],
                      help='a gin file (repeatable), e.g. configs/demo.gin')
  parser.add_argument('--gin_search_paths', action='append', default=[],
                      help='more directories to look for gin files in (repeatable)')
  parser.add_argument('--tfds_data_dir', default=None,
                      help='TFDS data directory (e.g. gs://bucket/tfds) for C4/GLUE tasks.')
  parser.add_argument('--multihost', action='store_true',
                      help='call jax.distributed.initialize() (multi-host TPU slices).')
  parser.add_argument('types', nargs='*', help='attention types for `params`.')
  args = parser.parse_args(argv)

  if args.command == 'params':
    from synth_jax.attention import param_count  # pylint: disable=g-import-not-at-top
    param_count.main(args.types)
    return 0
  if args.multihost or _is_multihost_tpu():
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  if args.tfds_data_dir:
    import seqio  # pylint: disable=g-import-not-at-top
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  if not args.gin_file and not any(b.startswith('MODEL_DIR ') for b in bindings):
    parser.error('give a --gin_file (e.g. configs/demo.gin), or --gin.MODEL_DIR of a run that '
                 'saved its config.gin.')
  saved = parse_run_config(args.gin_file, bindings, args.gin_search_paths)
  if not saved and not args.gin_file:
    raise SystemExit('MODEL_DIR has no run to read (a config.gin and a checkpoint, written by '
                     'synth-jax train): give the run\'s --gin_file.')
  if saved:
    print(f'Configuration: {saved} (the run\'s saved settings win over --gin_file files; '
          '--gin.NAME=VALUE wins over both).', flush=True)
  from synth_jax import train  # pylint: disable=g-import-not-at-top
  try:
    if args.command == 'infer':
      train.train(eval_only=True, eval_steps=0, infer_examples=args.examples)
    else:
      train.train(eval_only=(args.command == 'eval'))
  except _user_errors() as error:  # the message names the fix; a traceback would bury it
    message = '\n'.join(line for line in str(error).splitlines()
                        if not line.strip().startswith('In call to configurable'))
    raise SystemExit(f'synth-jax {args.command}: {message}') from error
  return 0


def _user_errors() -> tuple[type[Exception], ...]:
  """Errors about the run's inputs (data, MODEL_DIR, checkpoints), printed without a traceback."""
  # pylint: disable=g-import-not-at-top
  from synth_jax import checkpoints, data, lease, run_config, train
  return (data.DataNotPreparedError, lease.LeaseHeldError, lease.LeaseLostError,
          run_config.ModelMismatchError, checkpoints.CheckpointError, train.ModelDirError)


def _is_multihost_tpu() -> bool:
  """TPU VM slices list their workers in TPU_WORKER_HOSTNAMES; more than one means multi-host."""
  return len([h for h in os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]) > 1


if __name__ == '__main__':
  sys.exit(main())
