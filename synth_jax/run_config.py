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
from typing import Optional

CONFIG_FILE = 'config.gin'
MODEL_FILE = 'model.json'
# T5Config fields a later command may change: numerics and regularisation, and the lengths
# (where a length is a parameter's shape, the restore names that parameter).
NOT_ARCHITECTURE = ('dtype', 'dropout_rate', 'logits_matmul_dtype', 'max_encoder_length',
                    'max_decoder_length')


class ModelMismatchError(ValueError):
  pass


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile reads and writes gs://)
  return tf.io.gfile


def saved_config(model_dir: Optional[str]) -> Optional[str]:
  """`model_dir/config.gin` if the run saved one."""
  if not model_dir:
    return None
  path = os.path.join(model_dir, CONFIG_FILE)
  return path if _gfile().exists(path) else None


def has_checkpoint(model_dir: Optional[str]) -> bool:
  """Whether `model_dir/checkpoints` holds a step: a run to evaluate or resume."""
  directory = os.path.join(model_dir or '', 'checkpoints')
  if not model_dir or not _gfile().isdir(directory):
    return False
  return any(name.rstrip('/').isdigit() for name in _gfile().listdir(directory))


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
  with _gfile().GFile(path) as f:
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
  if not _gfile().exists(path):
    return
  with _gfile().GFile(path) as f:
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
