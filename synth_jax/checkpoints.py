"""Checkpoints: orbax saves that are atomic (written to a temporary directory, then renamed),
asynchronous, keep the newest N, and restore straight into the mesh's shardings.
"""
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp

from synth_jax import run_config


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

  def maybe_save(self, step: int, state, force: bool = False) -> bool:
    """Starts saving `state` as `step` if due (or forced); returns whether it did."""
    if self._manager is None or not (force or self.is_due(step)):
      return False
    if step in self._manager.all_steps():
      return False
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    return True

  def wait(self):
    if self._manager is not None:
      self._manager.wait_until_finished()

  def restore(self, state, shardings, step: Optional[int] = None):
    """The checkpoint at `step` (default: latest), placed like `state` with `shardings`."""
    step = self.latest_step() if step is None else step
    step_dir = os.path.join(self.directory, str(step))
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(state, shardings)))
    except Exception as error:  # orbax raises many types; all mean the same to the user
      item = os.path.join(step_dir, 'default')
      differences = parameter_differences(state, item)
      if differences:
        raise CheckpointError(different_model_message(
            f'checkpoint step {step} in {self.directory}', differences,
            os.path.dirname(self.directory), 'MODEL_DIR')) from None
      optimizer = parameter_differences(state, item, keep=('opt_state',))
      if optimizer:
        raise CheckpointError(
            f'checkpoint step {step} in {self.directory} holds the same parameters but another '
            f'optimizer state ({len(optimizer)} leaves differ, e.g. {optimizer[0]}): resume '
            'with the optimizer it was trained with (make_optimizer and its options), or start '
            'a new MODEL_DIR from it with INITIAL_CHECKPOINT_PATH.') from None
      raise CheckpointError(
          f'could not restore checkpoint step {step} from {self.directory}: '
          f'{_first_line(error)}. Its parameters match the model, so the step directory is '
          f'incomplete or corrupt: move {step_dir} aside to resume from the previous checkpoint, '
          'or start a fresh MODEL_DIR.') from error


def read_variables(model_dir: str, abstract: dict, step: Optional[int] = None,
                   command: str = 'this command') -> tuple[dict, int]:
  """(`{'params', 'frozen'}` of the checkpoint at `step` (default: latest) of `model_dir`, step).

  Reads only those collections (orbax partial restore), placed as `abstract` (`ShapeDtypeStruct`s
  with shardings, e.g. `train_state.abstract_variables`) after checking their shapes, so eval,
  inference and attention maps need no optimizer state. The trainer's resume is
  `Manager.restore` (the whole train state).
  """
  directory = os.path.join(model_dir, 'checkpoints')
  steps = []
  if model_dir.startswith('gs://') or os.path.isdir(directory):
    steps = ocp.utils.checkpoint_steps(directory)
  if not steps:
    raise CheckpointError(
        f'{command} needs a checkpoint, and {directory} has none; train first or point '
        'MODEL_DIR at a run (--gin.MODEL_DIR="\'/path/to/run\'").')
  step = max(steps) if step is None else step
  if step not in steps:
    raise CheckpointError(f'no checkpoint step {step} in {directory}; it has {sorted(steps)}.')
  item = os.path.join(directory, str(step), 'default')
  differences = parameter_differences(abstract, item)
  if differences:
    raise CheckpointError(different_model_message(
        f'checkpoint step {step} in {directory}', differences, model_dir, 'MODEL_DIR'))
  stored = ocp.StandardCheckpointer().metadata(item).item_metadata.tree
  wanted = {k: v for k, v in abstract.items() if stored.get(k)}
  restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      item, args=ocp.args.PyTreeRestore(
          item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
          partial_restore=True))
  return {**{k: {} for k in abstract}, **dict(restored)}, step


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
    differences = parameter_differences(state, item)
    if differences:
      run_dir = os.path.dirname(os.path.dirname(path.rstrip('/')))  # RUN/checkpoints/STEP
      raise CheckpointError(different_model_message(
          f'INITIAL_CHECKPOINT_PATH {path}', differences, run_dir, 'its run')) from None
    raise CheckpointError(
        f'could not read a train state from {item}: {_first_line(error)}. '
        'INITIAL_CHECKPOINT_PATH must be a complete step directory of a run with the same model '
        'and optimizer.') from error
  return state.replace(params=restored.params, frozen=restored.frozen)


def _first_line(error: Exception, limit: int = 300) -> str:
  text = str(error).strip().splitlines()
  return (text[0] if text else type(error).__name__)[:limit]


def _flat_shapes(tree, keep=('params', 'frozen')) -> dict[str, tuple]:
  """'params/encoder/.../kernel' -> shape, for the leaves under `keep`."""
  def name(key):
    return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [name(k) for k in path]
    if names and names[0] in keep:
      shapes['/'.join(names)] = tuple(getattr(leaf, 'shape', ()))
  return shapes


def parameter_differences(state, item_dir: str, keep=('params', 'frozen')) -> list[str]:
  """How the leaves under `keep` saved in `item_dir` differ from `state`'s, one line each
  (empty if they match or the checkpoint's metadata cannot be read)."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(item_dir)
  except Exception:  # pylint: disable=broad-except  (unreadable: the caller calls it corrupt)
    return []
  saved = _flat_shapes(getattr(metadata, 'item_metadata', metadata), keep)
  if not saved:
    return []
  expected = _flat_shapes(state, keep)
  lines = [f'only in the checkpoint: {p} {saved[p]}' for p in sorted(set(saved) - set(expected))]
  lines += [f'only in this model: {p} {expected[p]}' for p in sorted(set(expected) - set(saved))]
  lines += [f'shape: {p} is {saved[p]} in the checkpoint, {expected[p]} in this model'
            for p in sorted(set(saved) & set(expected)) if saved[p] != expected[p]]
  return lines


def different_model_message(what: str, differences: list[str], run_dir: str,
                            run_name: str) -> str:
  """At most ~10 lines: which parameters differ and how the saved run chose its attention."""
  shown = differences[:5] + ([f'... and {len(differences) - 5} more'] if len(differences) > 5
                             else [])
  attention = run_config.saved_attention(run_dir)
  hint = (f'{run_name} was trained with {attention} ({run_dir}/{run_config.CONFIG_FILE}): '
          'use the same attention type and widths, or a new MODEL_DIR.' if attention else
          'Use the model it was trained with (attention type, widths), or a new MODEL_DIR.')
  return (f'{what} holds a different model: {len(differences)} parameter(s) differ.\n  ' +
          '\n  '.join(shown) + '\n' + hint)
