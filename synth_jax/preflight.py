"""Answers before imports: what `synth-jax train|eval|infer` can tell from the command line
alone, before gin, TensorFlow or jax load (seconds, not a minute, on a small machine).

From a literal `--gin.MODEL_DIR='...'` flag (local paths): a MODEL_DIR that cannot hold a run,
a second trainer of a MODEL_DIR a live trainer holds, a fresh run from a literal
`--gin.INITIAL_CHECKPOINT_PATH='...'` that is not there, and eval or infer of a MODEL_DIR
without a checkpoint are refused here, with the message the later checks would give, and
nothing is written. Anything the flags do not settle is left to those later checks.
"""
import ast
from typing import Optional, Sequence

from synth_jax import lease as lease_lib
from synth_jax import run_config


class PreflightError(ValueError):
  """A mistake found from the command line alone."""


def literal_flag(bindings: Sequence[str], name: str) -> Optional[str]:
  """The value of a `name = '...'` binding written as a plain string, else None."""
  for binding in reversed(bindings):  # the last one wins, as in gin
    bound, _, value = binding.partition('=')
    if bound.strip() == name:
      try:
        found = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError):
        return None
      return found if isinstance(found, str) and found else None
  return None


def check(command: str, bindings: Sequence[str]):
  """Raises the one-line error a `command` run on the flag's MODEL_DIR would end with."""
  model_dir = literal_flag(bindings, 'MODEL_DIR')
  if model_dir is None or '://' in model_dir:
    return
  run_config.check_model_dir(model_dir)
  if command == 'train':
    held = lease_lib.Lease(model_dir).held_locally()
    if held is not None:
      raise held
    missing = run_config.missing_initial_checkpoint_message(
        literal_flag(bindings, 'INITIAL_CHECKPOINT_PATH'), model_dir)
    if missing:
      raise PreflightError(missing)
  elif command in ('eval', 'infer') and not run_config.has_checkpoint(model_dir):
    raise PreflightError(run_config.missing_checkpoint_message(command, model_dir))
