"""Every gin knob an error message tells the user to set exists (in gin's registry or as a macro
of the repository's gin files), so following the advice never fails with "unknown binding"."""
import ast
import pathlib
import re

import gin
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# A knob is named as a flag (--gin.NAME), or as a binding (NAME = ..., NAME=...).
FLAG = re.compile(r'--gin\.([A-Za-z_][\w.]*\w)')
DOTTED_BINDING = re.compile(r'(?<![\w.-])([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+) ?=(?!=)')
MACRO_BINDING = re.compile(r'(?<![\w.-])([A-Z][A-Z0-9_]{2,}) ?=(?!=)')


def _text(node) -> str:
  """A string literal, f-strings with their placeholders as '{}'."""
  if isinstance(node, ast.Constant) and isinstance(node.value, str):
    return node.value
  if isinstance(node, ast.JoinedStr):
    return ''.join(_text(v) if isinstance(v, ast.Constant) else '{}' for v in node.values)
  if isinstance(node, ast.BinOp):  # 'a' + 'b'
    return _text(node.left) + _text(node.right)
  return ''


def messages(source: str) -> list[str]:
  """The string arguments of every `raise X(...)` and `parser.error(...)` in `source`."""
  found = []
  for node in ast.walk(ast.parse(source)):
    call = None
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
      call = node.exc
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and
          node.func.attr == 'error'):
      call = node
    if call is not None:
      found.extend(t for t in (_text(a) for a in call.args) if t)
  return found


def knobs(message: str) -> set[str]:
  names = set(FLAG.findall(message)) | set(DOTTED_BINDING.findall(message))
  names |= set(MACRO_BINDING.findall(message))
  return {n for n in names if n not in ('NAME',)}


def macros_of_gin_files() -> set[str]:
  defined = set()
  for path in [*REPO.glob('gin/**/*.gin'), *REPO.glob('configs/**/*.gin')]:
    defined |= set(re.findall(r'^([A-Z][A-Z0-9_]*)\s*=', path.read_text(), re.MULTILINE))
  return defined


def knob_exists(name: str, macros: set[str]) -> bool:
  if '.' not in name:
    return name in macros
  import synth_jax.train  # pylint: disable=g-import-not-at-top,unused-import  (registers configurables)
  try:
    with gin.unlock_config():
      gin.parse_config(f'{name} = None')
  except (ValueError, KeyError):
    return False
  finally:
    gin.clear_config()
  return True


def all_knobs() -> dict[str, list[str]]:
  named = {}
  for path in sorted((REPO / 'synth_jax').rglob('*.py')):
    for message in messages(path.read_text()):
      for name in knobs(message):
        named.setdefault(name, []).append(f'{path.relative_to(REPO)}: {message[:80]!r}')
  return named


def test_the_collector_finds_flags_bindings_and_macros():
  source = ('def f(x):\n'
            '  raise ValueError(f"set create_mesh.model_parallelism={x} or --gin.TRAIN_STEPS=2")\n'
            'def g(p):\n'
            '  p.error("BATCH_SIZE=3 is odd; x == 1 is fine")\n')
  assert {k for m in messages(source) for k in knobs(m)} == {
      'create_mesh.model_parallelism', 'TRAIN_STEPS', 'BATCH_SIZE'}
  macros = macros_of_gin_files()
  assert not knob_exists('create_mesh.model_parallelism', macros)  # the knob issue 16 found
  assert not knob_exists('synth_jax.train.train.model_paralelism', macros)  # a typo
  assert knob_exists('synth_jax.train.train.model_parallelism', macros)
  assert knob_exists('TRAIN_STEPS', macros) and not knob_exists('TRAIN_STEP', macros)


def test_every_knob_named_in_an_error_message_exists():
  named = all_knobs()
  assert len(named) >= 5, named  # the collector sees the messages at all
  macros = macros_of_gin_files()
  missing = {name: where for name, where in named.items() if not knob_exists(name, macros)}
  assert not missing, missing
