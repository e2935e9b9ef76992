"""Command-line gin for every command: `--gin_file`, `--gin.NAME=VALUE`, a run's saved config.

  --gin_file=FILE       a gin file (repeatable; later files win), looked up in the working
                        directory, then `--gin_search_paths`, then the repository's `configs/`
                        and `gin/`
  --gin.NAME=VALUE      binds a macro or parameter; VALUE is gin syntax, so strings keep their
                        quotes: --gin.MODEL_DIR="'/tmp/run'"

`parse_run_config` adds what a MODEL_DIR remembers (`run_config`), so `eval`, `infer` and
`attention-maps` read a run as it was trained. `train_binding` reads back what gin binds to
`synth_jax.train.train`'s arguments: the one description of a run, which the commands that
evaluate, decode or draw it share.
"""
import argparse
import ast
import inspect
import logging
import os
import pathlib
from typing import Any, Callable, Optional, Sequence

import gin

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_SCOPE = 'synth_jax.train.train'

HELP = """gin flags (train, eval, infer, attention-maps):
  --gin_file=FILE          a gin file; repeat to combine (later files win)
  --gin.NAME=VALUE         bind a macro or parameter; VALUE is gin syntax, so strings keep
                           their quotes: --gin.ATTENTION_TYPE="'random'" --gin.TRAIN_STEPS=1000
                           --gin.MODEL_DIR="'/tmp/run'" --gin.train.model_parallelism=2

examples:
  synth-jax train --gin_file=configs/demo.gin --gin.MODEL_DIR="'/tmp/demo'"
  synth-jax eval  --gin.MODEL_DIR="'/tmp/demo'"   (reads /tmp/demo/config.gin, saved by train)
  synth-jax diagnose --help
"""


def add_flags(parser: argparse.ArgumentParser, gin_file_help: str = 'a gin file (repeatable), '
              'e.g. configs/demo.gin'):
  """Adds `--gin_file` and `--gin_search_paths` (the `--gin.NAME=VALUE` family is `split`'s)."""
  parser.add_argument('--gin_file', action='append', default=[], help=gin_file_help)
  parser.add_argument('--gin_search_paths', action='append', default=[],
                      help='more directories to look for gin files in (repeatable)')


class FlagError(ValueError):
  """A command-line flag that cannot mean anything; the message shows the fix."""


def check_value(name: str, value: str):
  """Raises `FlagError` for a VALUE gin cannot parse as a value: not a Python literal, not a
  reference (`@name`, `%MACRO`) nor a container of them; most often a string without quotes."""
  text = value.strip()
  try:
    ast.literal_eval(text)
    return
  except (ValueError, SyntaxError):
    pass
  if text and (text[0] in '@%' or (text[0] in '[({' and ('@' in text or '%' in text))):
    return
  raise FlagError(f'--gin.{name}={value}: VALUE is gin syntax, and {value!r} is not a gin value; '
                  f'a string keeps its quotes inside the shell\'s: --gin.{name}="\'{value}\'"')


def split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """`(bindings, other arguments)`: `--gin.NAME=VALUE` pulled out of argv as `NAME = VALUE`
  (argparse cannot declare a dotted family of flags); a VALUE gin cannot parse is a
  `FlagError` naming the flag."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.'):].partition('=')
      if not sep:
        raise FlagError(f'{arg!r}: write --gin.NAME=VALUE, e.g. --gin.ATTENTION_TYPE="\'random\'"')
      check_value(name, value)
      bindings.append(f'{name} = {value}')
    else:
      rest.append(arg)
  return bindings, rest


def names_model_dir(bindings: Sequence[str]) -> bool:
  return any(b.startswith('MODEL_DIR ') for b in bindings)


def search_paths(extra: Sequence[str] = ()) -> list[str]:
  candidates = [os.getcwd(), *extra, REPO_ROOT, REPO_ROOT / 'configs', REPO_ROOT / 'gin']
  return [str(p) for p in candidates if os.path.isdir(p)]


class _QuietSearchMisses(logging.Filter):
  """Gin logs an error for every search path an include is not in; only the last miss matters."""

  def filter(self, record):
    return not record.getMessage().startswith('Path not found')


def check_files(gin_files: Sequence[str], extra_paths: Sequence[str] = ()):
  """Raises `FlagError` for a --gin_file found in none of the search paths (before anything
  heavy is imported)."""
  for name in gin_files:
    if not any(os.path.isfile(os.path.join(p, name)) for p in ['', *search_paths(extra_paths)]):
      raise FlagError(f'--gin_file={name}: not found in {", ".join(search_paths(extra_paths))}; '
                      'give a path relative to one of them (e.g. configs/demo.gin).')


def parse(gin_files: Sequence[str], bindings: Sequence[str], extra_paths: Sequence[str] = ()):
  """Parses gin files and `NAME = VALUE` bindings, with the repository's gin dirs searchable."""
  check_files(gin_files, extra_paths)
  root = logging.getLogger()
  if not any(isinstance(f, _QuietSearchMisses) for f in root.filters):
    root.addFilter(_QuietSearchMisses())
  import synth_jax.train  # pylint: disable=g-import-not-at-top,unused-import  (registers configurables)
  for path in search_paths(extra_paths):
    gin.add_config_file_search_path(path)
  gin.parse_config_files_and_bindings(list(gin_files), list(bindings), finalize_config=False)


def parse_run_config(gin_files: Sequence[str], bindings: Sequence[str],
                     extra_paths: Sequence[str] = ()) -> Optional[str]:
  """`parse`, with the configuration a MODEL_DIR saved when its run started (`run_config`).

  Order, later wins: the --gin_file files, then MODEL_DIR/config.gin, then the --gin.NAME=VALUE
  bindings. So `synth-jax eval --gin.MODEL_DIR=...` evaluates the run as it was trained, and a
  flag still changes what it names. A MODEL_DIR without a checkpoint holds no run yet: its
  config.gin is ignored. Returns the saved config's path, or None if none was read.
  """
  parse(gin_files, bindings, extra_paths)
  try:
    model_dir = gin.query_parameter('%MODEL_DIR')
  except ValueError:  # no MODEL_DIR macro: nothing remembered
    return None
  from synth_jax import run_config  # pylint: disable=g-import-not-at-top  (jax-free startup)
  # Without a checkpoint there is no run to continue: a new one starts from its own gin files.
  saved = run_config.saved_config(model_dir) if run_config.has_checkpoint(model_dir) else None
  if saved:
    gin.clear_config()
    parse(gin_files, [], extra_paths)
    # Read through gfile (MODEL_DIR may be gs://), then the flags on top.
    gin.parse_config(run_config.read_text(saved))
    gin.parse_config(list(bindings))
  return saved


_UNSET = inspect.Parameter.empty


def train_binding(name: str, default: Any = _UNSET, command: str = 'this command') -> Any:
  """The value gin binds to `synth_jax.train.train`'s argument `name`, macros and configurable
  references evaluated; `default` when unbound (without one, a SystemExit naming the fix)."""
  try:
    value = gin.query_parameter(f'{TRAIN_SCOPE}.{name}')
  except ValueError:
    if default is not _UNSET:
      return default
    raise SystemExit(f'{command} reads the run from gin, and {TRAIN_SCOPE}.{name} is not bound: '
                     "pass the run's gin files (e.g. MODEL_DIR/config.gin).") from None
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  return value


def train_bindings_for(function: Callable, command: str, **given) -> dict[str, Any]:
  """Keyword arguments for `function` (e.g. `train.evaluate`) from the run's gin: each of its
  parameters that `given` lacks takes `train_binding` (required ones must be bound; the others
  keep `function`'s default when gin leaves them unbound)."""
  arguments = dict(given)
  for name, parameter in inspect.signature(function).parameters.items():
    if name not in arguments:
      value = train_binding(name, parameter.default, command)
      if value is not _UNSET:
        arguments[name] = value
  return arguments
