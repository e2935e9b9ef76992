"""Checkpoints: orbax saves that are atomic (written to a temporary directory, then renamed),
asynchronous, keep the newest N, and restore straight into the mesh's shardings.
"""
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  pass


class Manager:
  """Saves `TrainState`s under `model_dir/checkpoints/<step>`; None model_dir disables saving."""

  def __init__(self, model_dir: Optional[str], period: int, keep: Optional[int]):
    self.period = period
    self.directory = None if model_dir is None else os.path.join(model_dir, 'checkpoints')
    self._manager = None
    if self.directory is not None:
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True)
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> Optional[int]:
    return None if self._manager is None else self._manager.latest_step()

  def is_due(self, step: int) -> bool:
    """Whether `maybe_save` saves at `step` without being forced."""
    return self._manager is not None and step % self.period == 0

  def maybe_save(self, step: int, state, force: bool = False):
    if self._manager is None or not (force or self.is_due(step)):
      return
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def wait(self):
    if self._manager is not None:
      self._manager.wait_until_finished()

  def restore(self, state, shardings, step: Optional[int] = None):
    """The checkpoint at `step` (default: latest), placed like `state` with `shardings`."""
    step = self.latest_step() if step is None else step
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(state, shardings)))
    except Exception as error:  # orbax raises many types; all mean the same to the user
      raise CheckpointError(
          f'could not restore checkpoint step {step} from {self.directory}: {error}. The step '
          f'directory is incomplete or corrupt: move {os.path.join(self.directory, str(step))} '
          'aside to resume from the previous checkpoint, or start a fresh MODEL_DIR.') from error


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def load_params_into(state, shardings, path: str):
  """`state` with the parameters (and frozen variables) of the checkpoint step dir `path`.

  For finetuning: the step, optimizer state and data position start fresh. `path` is a step
  directory written by this trainer, e.g. `gs://bucket/pretrain/checkpoints/100000`.
  """
  if not path.startswith('gs://') and not os.path.isdir(path):
    raise CheckpointError(f'INITIAL_CHECKPOINT_PATH {path!r} does not exist; point it at a step '
                          'directory such as MODEL_DIR/checkpoints/<step>.')
  item = os.path.join(path, 'default')
  try:
    restored = ocp.StandardCheckpointer().restore(item, _abstract(state, shardings))
  except Exception as error:  # pylint: disable=broad-except
    raise CheckpointError(
        f'could not read a train state from {item}: {error}. INITIAL_CHECKPOINT_PATH must be a '
        'step directory of a run with the same model and optimizer.') from error
  return state.replace(params=restored.params, frozen=restored.frozen)
