"""MODEL_DIR remembers its run: the configuration saved when training starts, read back later.

  MODEL_DIR/config.gin   the run's gin configuration; `synth-jax eval|infer|train` on a MODEL_DIR
                         that has it and a checkpoint start from it (the CLI's
                         `parse_run_config`), flags on top
  MODEL_DIR/model.json   the network's `T5Config`; a resume, eval or infer whose architecture
                         differs from it is refused (`check_same_model`) before anything is
                         restored

Files are read and written with `tf.io.gfile`, so MODEL_DIR may be local or on `gs://`.
"""
import dataclasses
import json
import os
import re
import tempfile
from typing import Optional

CONFIG_FILE = 'config.gin'
MODEL_FILE = 'model.json'
# T5Config fields a later command may change: numerics and regularisation, and the lengths
# (where a length is a parameter's shape, the restore names that parameter).
NOT_ARCHITECTURE = ('dtype', 'dropout_rate', 'logits_matmul_dtype', 'max_encoder_length',
                    'max_decoder_length')


class ModelMismatchError(ValueError):
  pass


class ModelDirError(ValueError):
  """MODEL_DIR cannot hold a run (a file, or not writable)."""


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile reads and writes gs://)
  return tf.io.gfile


class _LocalFiles:
  """The part of `tf.io.gfile` the reads here use, for local paths: answering whether a local
  MODEL_DIR holds a run must not wait for TensorFlow to import."""
  exists = staticmethod(os.path.exists)
  isdir = staticmethod(os.path.isdir)
  listdir = staticmethod(os.listdir)
  GFile = staticmethod(open)  # pylint: disable=invalid-name


def _reader(path: str):
  return _gfile() if '://' in path else _LocalFiles


def saved_config(model_dir: Optional[str]) -> Optional[str]:
  """`model_dir/config.gin` if the run saved one."""
  if not model_dir:
    return None
  path = os.path.join(model_dir, CONFIG_FILE)
  return path if _reader(path).exists(path) else None


def check_model_dir(model_dir: Optional[str]):
  """Raises a one-line `ModelDirError` for a local MODEL_DIR that cannot hold a run (gs:// is
  checked on write)."""
  if not model_dir or '://' in model_dir:
    return
  existing = model_dir
  while existing and not os.path.exists(existing):
    existing = os.path.dirname(existing.rstrip(os.sep))
  if os.path.exists(model_dir) and not os.path.isdir(model_dir):
    problem = 'is a file'
  elif existing and not os.path.isdir(existing):
    problem = f'cannot be created ({existing} is a file)'
  elif existing and not _can_create_in(existing):
    problem = f'cannot be created or written ({existing} is not writable)'
  else:
    return
  raise ModelDirError(f'MODEL_DIR={model_dir!r} {problem}: point MODEL_DIR at a directory you '
                      'can write, e.g. --gin.MODEL_DIR="\'/tmp/my_run\'".')


def _can_create_in(directory: str) -> bool:
  """Whether a directory can be made in `directory`: tried (and removed), since permission bits
  say nothing of file systems such as /proc, where even root cannot."""
  if not os.access(directory, os.W_OK):
    return False
  try:
    os.rmdir(tempfile.mkdtemp(dir=directory, prefix='.synth_jax_probe_'))
  except OSError:
    return False
  return True


def missing_checkpoint_message(command: str, model_dir: str) -> str:
  directory = os.path.join(model_dir, 'checkpoints')
  return (f'{command} needs a checkpoint, and {directory} has none; train first or point '
          'MODEL_DIR at a run (--gin.MODEL_DIR="\'/path/to/run\'").')


def has_checkpoint(model_dir: Optional[str]) -> bool:
  """Whether `model_dir/checkpoints` holds a step: a run to evaluate or resume."""
  directory = os.path.join(model_dir or '', 'checkpoints')
  files = _reader(directory)
  if not model_dir or not files.isdir(directory):
    return False
  return any(name.rstrip('/').isdigit() for name in files.listdir(directory))


def missing_initial_checkpoint_message(path: str, model_dir: Optional[str]) -> Optional[str]:
  """The one-line error of a fresh run whose local INITIAL_CHECKPOINT_PATH is not there, else
  None (a resume of `model_dir` reads its own checkpoint and never the initial one)."""
  if not path or '://' in path or os.path.isdir(path) or has_checkpoint(model_dir):
    return None
  return (f'INITIAL_CHECKPOINT_PATH {path!r} does not exist; point it at a step directory such '
          'as MODEL_DIR/checkpoints/<step>.')


def describe(model) -> dict:
  """The architecture of `model` (a `network.Transformer`) as JSON values: its T5Config."""
  return json.loads(json.dumps(dataclasses.asdict(model.config), default=str))


def _defaults(config_class) -> dict:
  """The JSON values of `config_class`'s field defaults (fields without one are left out)."""
  defaults = {}
  for field in dataclasses.fields(config_class):
    if field.default is not dataclasses.MISSING:
      defaults[field.name] = field.default
    elif field.default_factory is not dataclasses.MISSING:
      defaults[field.name] = field.default_factory()
  return json.loads(json.dumps(defaults, default=str))


def read_text(path: str) -> str:
  with _reader(path).GFile(path) as f:
    return f.read()


def write(model_dir: str, config_text: str, model):
  """Saves the run's gin configuration and its model description under `model_dir`."""
  gfile = _gfile()
  gfile.makedirs(model_dir)
  for name, text in ((CONFIG_FILE, config_text),
                     (MODEL_FILE, json.dumps(describe(model), indent=1, sort_keys=True))):
    temporary = os.path.join(model_dir, f'.{name}.tmp')
    with gfile.GFile(temporary, 'w') as f:
      f.write(text)
    gfile.rename(temporary, os.path.join(model_dir, name), overwrite=True)


def saved_attention(model_dir: str) -> Optional[str]:
  """How the run in `model_dir` chose its attention, e.g. "ATTENTION_TYPE = 'random'"."""
  path = saved_config(model_dir)
  if path is None:
    return None
  text = read_text(path)
  found = (re.search(r'^ATTENTION_TYPE = .*$', text, re.MULTILINE) or
           re.search(r'^T5Config\.encoder_attention = .*$', text, re.MULTILINE))
  return found.group(0) if found else None


def check_same_model(model_dir: Optional[str], model, command: str = 'resume'):
  """Raises `ModelMismatchError` naming the differences if `model_dir` was trained with
  another model than `model` (runs without a saved description pass)."""
  if not model_dir:
    return
  path = os.path.join(model_dir, MODEL_FILE)
  if not _reader(path).exists(path):
    return
  with _reader(path).GFile(path) as f:
    saved = json.load(f)
  current = describe(model)
  # A field added after the run was saved is the same model if it holds its default.
  defaults = _defaults(type(model.config))
  saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
  differing = sorted(k for k in set(saved) | set(current)
                     if k not in NOT_ARCHITECTURE and saved.get(k) != current.get(k))
  if not differing:
    return
  lines = [f'  {k}: {saved.get(k)!r} in the saved run, {current.get(k)!r} now'
           for k in differing[:5]]
  if len(differing) > 5:
    lines.append(f'  ... and {len(differing) - 5} more')
  raise ModelMismatchError(
      f'cannot {command}: MODEL_DIR={model_dir} holds a run of another model ({path}):\n' +
      '\n'.join(lines) + '\nDrop the flag or gin file that changes the model (the run\'s saved '
      f'{CONFIG_FILE} is read automatically), or give a new MODEL_DIR.')
