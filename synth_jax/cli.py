"""`synth-jax COMMAND` (train, eval, infer, params, diagnose...): T5X-style flags over gin.

  synth-jax train --gin_file=configs/demo.gin --gin.MODEL_DIR="'/tmp/demo'"
  synth-jax train --gin_file=configs/c4_pretrain_base.gin --gin.ATTENTION_TYPE="'random'" ...
  synth-jax eval  --gin.MODEL_DIR="'/tmp/demo'"      (a run's MODEL_DIR remembers its config)
  synth-jax infer --gin.MODEL_DIR="'/tmp/demo'" --examples=4
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
from typing import Optional, Sequence

from synth_jax import gin_flags

# Commands with their own flags: `main(argv)` of the module, imported only when called.
SUBCOMMANDS = {
    'diagnose': 'synth_jax.diagnostics.run',
    'attention-maps': 'synth_jax.diagnostics.attention_maps',
    'diagnose-compare': 'synth_jax.diagnostics.compare',
    'bench': 'synth_jax.bench',
}


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
  bindings, argv = gin_flags.split(argv)
  parser = argparse.ArgumentParser(
      prog='synth-jax', description=__doc__.split('\n')[0], epilog=gin_flags.HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('command', choices=['train', 'eval', 'infer', 'params', *SUBCOMMANDS],
                      help='diagnose, diagnose-compare and attention-maps take their own flags '
                           '(COMMAND --help).')
  parser.add_argument('--examples', type=int, default=8, help='examples `infer` decodes.')
  gin_flags.add_flags(parser)
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
  if not args.gin_file and not gin_flags.names_model_dir(bindings):
    parser.error('give a --gin_file (e.g. configs/demo.gin), or --gin.MODEL_DIR of a run that '
                 'saved its config.gin.')
  saved = gin_flags.parse_run_config(args.gin_file, bindings, args.gin_search_paths)
  if not saved and not args.gin_file:
    raise SystemExit('MODEL_DIR has no run to read (a config.gin and a checkpoint, written by '
                     'synth-jax train): give the run\'s --gin_file.')
  if saved:
    print(f'Configuration: {saved} (the run\'s saved settings win over --gin_file files; '
          '--gin.NAME=VALUE wins over both).', flush=True)
  try:
    run_command(args.command, args.examples)
  except _user_errors() as error:  # the message names the fix; a traceback would bury it
    message = '\n'.join(line for line in str(error).splitlines()
                        if not line.strip().startswith('In call to configurable'))
    raise SystemExit(f'synth-jax {args.command}: {message}') from error
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
