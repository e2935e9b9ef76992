"""Checkpoints: orbax saves that are atomic (written to a temporary directory, then renamed),
asynchronous, keep the newest N, and restore straight into the mesh's shardings.

A step that cannot be read (a truncated file, a half-copied directory) is moved to
`MODEL_DIR/checkpoints.corrupt/<step>`, never deleted, and the next newest step is read;
`strict=True` (`strict_restore` of `train.train`, `evaluate`, `infer`) refuses it instead.
"""
import contextlib
import logging
import os
from typing import Optional

from etils import epath
import jax
import orbax.checkpoint as ocp

from synth_jax import run_config


class CheckpointError(RuntimeError):
  pass


class _SpuriousMetadataWarning(logging.Filter):
  """Drops orbax's `Metadata file does not exist: .../_CHECKPOINT_METADATA` (absl, WARNING):
  reading a step's item directory (`<step>/default`) looks for that file there, but orbax
  writes it one level up (`<step>/`), so every read of one warned twice, healthy ones included
  (eval, infer, finetuning, the model checks)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.msg == 'Metadata file does not exist: %s' and record.args and
                str(record.args[0]).endswith('_CHECKPOINT_METADATA'))


@contextlib.contextmanager
def _without_spurious_metadata_warning():
  """A scope (or decorator) in which only that warning is dropped from orbax's absl logger."""
  logger, dropped = logging.getLogger('absl'), _SpuriousMetadataWarning()
  logger.addFilter(dropped)
  try:
    yield
  finally:
    logger.removeFilter(dropped)


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

  def __enter__(self) -> 'Manager':
    return self

  def __exit__(self, exc_type, exc, traceback):
    # A save begun while this trainer held MODEL_DIR finishes even when training stops on an
    # error (a lost lease, a failed step): else its temporary directory is left half written.
    # Not on an error of a run of several processes: finishing a save takes them all, and one
    # may be gone (a lost peer exits at once, multihost.py).
    if exc_type is None or jax.process_count() == 1:
      self.wait()

  @_without_spurious_metadata_warning()
  def restore(self, state, shardings, step: Optional[int] = None, strict: bool = False):
    """The checkpoint at `step` (default: the newest readable one), placed like `state` with
    `shardings`; None when no step is left.

    Without `step` or `strict`, an unreadable step of this model is set aside
    (`set_aside`) and the next newest one tried; another model's checkpoint is always refused.
    """
    tried = set()
    while True:
      chosen = self.latest_step() if step is None else step
      if chosen is None:
        return None
      try:
        return self._manager.restore(chosen,
                                     args=ocp.args.StandardRestore(_abstract(state, shardings)))
      except Exception as error:  # orbax raises many types; all mean the same to the user
        self._refuse_another_model(state, chosen)
        if strict or step is not None or chosen in tried:
          raise CheckpointError(unreadable_message(self.directory, chosen, error)) from error
        tried.add(chosen)
        earlier = [s for s in self._manager.all_steps() if s < chosen]
        _fall_back(self.directory, chosen, error, max(earlier, default=None),
                   'resuming from step {}', 'no earlier step is left: training starts afresh')
        self._manager.reload()  # orbax caches its list of steps

  def _refuse_another_model(self, state, step: int):
    """A CheckpointError if `step` holds other parameters or another optimizer's state."""
    item = os.path.join(self.directory, str(step), 'default')
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


@_without_spurious_metadata_warning()
def read_variables(model_dir: str, abstract: dict, step: Optional[int] = None,
                   command: str = 'this command', strict: bool = False) -> tuple[dict, int]:
  """(`{'params', 'frozen'}` of the checkpoint at `step` (default: the newest readable one) of
  `model_dir`, its step).

  Reads only those collections (orbax partial restore), placed as `abstract` (`ShapeDtypeStruct`s
  with shardings, e.g. `train_state.abstract_variables`) after checking their shapes, so eval,
  inference and attention maps need no optimizer state. Unreadable steps are set aside as by
  `Manager.restore` (the trainer's resume: the whole train state), unless `step` or `strict`.
  """
  directory, tried = os.path.join(model_dir, 'checkpoints'), set()
  while True:
    steps = []
    if model_dir.startswith('gs://') or os.path.isdir(directory):
      steps = ocp.utils.checkpoint_steps(directory)
    if not steps:
      raise CheckpointError(
          f'{command} needs a checkpoint, and {directory} has none; train first or point '
          'MODEL_DIR at a run (--gin.MODEL_DIR="\'/path/to/run\'").')
    chosen = max(steps) if step is None else step
    if chosen not in steps:
      raise CheckpointError(f'no checkpoint step {chosen} in {directory}; it has {sorted(steps)}.')
    try:
      return _read_collections(model_dir, chosen, abstract), chosen
    except CheckpointError:
      raise
    except Exception as error:  # pylint: disable=broad-except  (orbax raises many types)
      if strict or step is not None or chosen in tried:
        raise CheckpointError(unreadable_message(directory, chosen, error)) from error
      tried.add(chosen)
      earlier = [s for s in steps if s < chosen]
      _fall_back(directory, chosen, error, max(earlier, default=None), 'reading step {}',
                 'no earlier step is left')


def _read_collections(model_dir: str, step: int, abstract: dict) -> dict:
  """`read_variables` of one step: a CheckpointError if it holds another model."""
  directory = os.path.join(model_dir, 'checkpoints')
  item = os.path.join(directory, str(step), 'default')
  differences = parameter_differences(abstract, item)
  if differences:
    raise CheckpointError(different_model_message(
        f'checkpoint step {step} in {directory}', differences, model_dir, 'MODEL_DIR'))
  stored = ocp.StandardCheckpointer().metadata(item).item_metadata
  if stored is None:  # orbax's answer when its metadata store is unreadable
    raise ValueError(f'the metadata in {item} cannot be read')
  stored = stored.tree
  wanted = {k: v for k, v in abstract.items() if stored.get(k)}
  restored = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).restore(
      item, args=ocp.args.PyTreeRestore(
          item=wanted, restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
          partial_restore=True))
  return {**{k: {} for k in abstract}, **dict(restored)}


def unreadable_message(directory: str, step: int, error: Exception) -> str:
  """The refusal of a step whose parameters match the model but whose files cannot be read."""
  step_dir = os.path.join(directory, str(step))
  return (f'could not restore checkpoint step {step} from {directory}: {_reason(error)}. Its '
          'parameters match the model, so the step directory is incomplete or corrupt: move '
          f'{step_dir} aside to resume from the previous checkpoint (strict_restore=False does '
          'that), or start a fresh MODEL_DIR.')


def set_aside(directory: str, step: int) -> Optional[str]:
  """Moves the unreadable `directory/<step>` to `directory.corrupt/<step>` (`<step>.1`, ... if
  taken), where orbax no longer sees it, never deleting it; returns where it went, or None if the
  step vanished meanwhile (deleted by a trainer's `keep_checkpoints`)."""
  source = epath.Path(directory) / str(step)
  target = epath.Path(directory + '.corrupt') / str(step)
  moved = source.exists()
  if moved and jax.process_index() == 0:
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
      if not target.exists():
        break
      target = target.parent / f'{step}.{n}'
    source.rename(target)
  if jax.process_count() > 1:  # the other hosts list the steps again only after the move
    ocp.multihost.sync_global_processes(f'synth_jax_set_aside_{step}')
  return str(target) if moved else None


def _fall_back(directory: str, step: int, error: Exception, instead: Optional[int],
               then: str, otherwise: str):
  """Sets `step` aside and prints one line saying so, ending in `then.format(instead)` (the step
  read instead), or `otherwise` when no step is left."""
  moved = set_aside(directory, step)
  print(f'checkpoint step {step} in {directory} cannot be read ({_reason(error)}): ' +
        (f'moved to {moved}' if moved else 'it was deleted meanwhile') + '; ' +
        (otherwise if instead is None else then.format(instead)), flush=True)


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


@_without_spurious_metadata_warning()
def load_params_into(state, shardings, path: str):
  """`state` with the parameters (and frozen variables) of the checkpoint step dir `path`.

  For finetuning: the step, optimizer state and data position start fresh. `path` is a step
  directory written by this trainer, e.g. `gs://bucket/pretrain/checkpoints/100000`.
  """
  missing = run_config.missing_initial_checkpoint_message(path, None)
  if missing:
    raise CheckpointError(missing)
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
        f'could not read a train state from {item}: {_reason(error)}. '
        'INITIAL_CHECKPOINT_PATH must be a complete step directory of a run with the same model '
        'and optimizer.') from error
  return state.replace(params=restored.params, frozen=restored.frozen)


def _reason(error: Exception) -> str:
  """The first line of the innermost cause: orbax wraps TensorStore's readable error (which
  file, which byte range) in one whose first line ends in a pybind repr."""
  for _ in range(10):
    if error.__cause__ is None:
      break
    error = error.__cause__
  return _first_line(error, 240).split(' See full TensorStore details')[0]


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


@_without_spurious_metadata_warning()
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
