"""seqio data for the trainer: feature-converted, batched, deterministic, resumable.

Batches come from `seqio.EncDecFeatureConverter` (packed for pretraining). The stream is a pure
function of (task, lengths, batch size, seed), so resuming at step s skips s batches and sees the
exact batches the interrupted run would have seen. It is the same on every process of a run: each
keeps its rows of every global batch, so several processes train on one process's batches.

Packed batches whose rows each hold one example are unpacked batches in disguise (C4
pretraining: documents are concatenated, then chunked to fill rows, so nearly every row holds
one); `unpack_single_example_rows` gives them back that form, which takes the faster unpacked
attention paths. `Dataset(..., unpack_single_example_rows=True)` streams train batches so.
"""
import logging
import os
from typing import Iterator, Mapping, Optional

import numpy as np
import seqio


def _register_tasks():
  # Importing the package registers synth-jax's seqio tasks (idempotent).
  import synth_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import


class _QuietUncachedTrainingWarning(logging.Filter):
  """seqio warns that uncached training data reshuffles differently after a restart. Here it does
  not: the stream is seeded and a resume skips exactly the batches already trained on."""

  def filter(self, record):
    return not record.getMessage().startswith('Using an uncached FunctionDataset for training')


def _quiet_seqio():
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _QuietUncachedTrainingWarning) for f in logger.filters):
    logger.addFilter(_QuietUncachedTrainingWarning())


_PACKING_FEATURES = ('encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions',
                    'decoder_positions')


def unpack_single_example_rows(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A packed batch whose every row holds at most one example, as the unpacked batch it equals.

  `seqio.EncDecFeatureConverter(pack=True)` output whose rows each hold one example at position
  0 (segment id 1 on its tokens, 0 on the trailing padding, positions 0, 1, ...) carries the
  tokens of `pack=False` output (decoder inputs differ at padding only, which neither the loss
  nor any real token reads) plus segment ids and positions that say nothing more. Without them
  the network masks by padding alone, which reaches cuDNN as sequence lengths and lets
  random synthesizers normalize once per step (BENCHMARKS.md has the step times).

  Args:
    batch: feature-converted `[batch, length]` arrays.

  Returns:
    `batch` without segment ids and positions if every row of the encoder and the decoder
    holds at most one example starting at position 0, and each row's inputs and targets are both
    empty or both not; otherwise (or unpacked already) `batch` as it is.
  """
  if 'encoder_segment_ids' not in batch:
    return dict(batch)
  # A row of targets without inputs: its decoder sees no encoder key, which the packed dense
  # mask and the unpacked lengths treat differently (a uniform average against zeros).
  if not np.array_equal(np.any(batch['encoder_input_tokens'] > 0, axis=1),
                        np.any(batch['decoder_target_tokens'] > 0, axis=1)):
    return dict(batch)
  for ids, tokens, positions in (
      ('encoder_segment_ids', 'encoder_input_tokens', 'encoder_positions'),
      ('decoder_segment_ids', 'decoder_target_tokens', 'decoder_positions')):
    valid = np.asarray(batch[tokens]) > 0
    # Segment id 1 exactly on the tokens, and the tokens one run from position 0.
    if not (np.array_equal(batch[ids], valid) and np.all(valid[:, 1:] <= valid[:, :-1])):
      return dict(batch)
    if positions in batch and not np.array_equal(
        batch[positions], np.where(valid, np.arange(valid.shape[1]), 0)):
      return dict(batch)
  return {k: v for k, v in batch.items() if k not in _PACKING_FEATURES}


def _unpacked_where_possible(batches: Iterator[Mapping[str, np.ndarray]],
                             first_step: int) -> Iterator[dict[str, np.ndarray]]:
  """`unpack_single_example_rows` of each batch; notes each form's first batch after the first."""
  forms_seen = set()  # 'packed' / 'unpacked': each compiles the step once
  for step, batch in enumerate(batches, first_step):
    batch = unpack_single_example_rows(batch)
    form = 'packed' if 'encoder_segment_ids' in batch else 'unpacked'
    if forms_seen and form not in forms_seen:
      print(f'step {step}: the first {form} batch of this run; compiling the step for it (once).',
            flush=True)
    forms_seen.add(form)
    yield batch


class DataNotPreparedError(FileNotFoundError):
  pass


def unprepared_tfds_datasets(mixture_or_task_name: str) -> list[tuple[str, str]]:
  """(TFDS name, data dir) of each TFDS dataset the task or mixture reads that is not prepared
  there (no `DATA_DIR/NAME/CONFIG/VERSION/dataset_info.json`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  found = seqio.get_mixture_or_task(mixture_or_task_name)
  missing = []
  for task in (found.tasks if isinstance(found, seqio.Mixture) else [found]):
    loader = getattr(task.source, 'tfds_dataset', None)
    if loader is None or not loader.name:
      continue
    data_dir = loader.data_dir or os.environ.get('TFDS_DATA_DIR') or constants.DATA_DIR
    name, _, version = loader.name.partition(':')
    if not tf.io.gfile.glob(os.path.join(data_dir, name, version or '*', 'dataset_info.json')):
      missing.append((loader.name, data_dir))
  return sorted(set(missing))


def _not_prepared_error(mixture_or_task_name: str) -> Optional[DataNotPreparedError]:
  missing = unprepared_tfds_datasets(mixture_or_task_name)
  if not missing:
    return None
  listed = ', '.join(f'{name} (in {data_dir})' for name, data_dir in missing[:4])
  more = f' and {len(missing) - 4} more' if len(missing) > 4 else ''
  return DataNotPreparedError(
      f'{mixture_or_task_name} reads TFDS datasets that are not prepared: {listed}{more}. '
      'Prepare them once (README, "Prepare the TFDS datasets": tfds build NAME --data_dir=DIR) '
      'and pass that directory as --tfds_data_dir.')


class Dataset:
  """This process's rows (`rows`) of global batches `{feature: np.ndarray[batch, length]}` of
  one seqio task or mixture.

  Every process reads the same stream of global batches (the one a single process reads) and
  keeps its rows of each, so a run on several processes trains on exactly the batches of a run
  on one, whatever the number of processes. The price: each process prepares every example
  (tokenizing, packing), not only its own.

  With `unpack_single_example_rows` (and `pack`), train batches whose rows each hold one example
  come as the unpacked batches they equal (`unpack_single_example_rows`), on the faster unpacked
  attention paths; the choice is made on the global batch, so every process makes the same. A
  step then compiles once for each form the data brings, and each form has its own peak memory
  (see BENCHMARKS.md).
  """

  def __init__(self, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
               batch_size: int, seed: int = 0, pack: bool = True,
               unpack_single_example_rows: bool = False, rows: Optional[slice] = None):
    """`batch_size`: of the global batch; `rows`: this process's rows of it (None: all)."""
    _register_tasks()
    _quiet_seqio()
    try:
      seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError as error:
      raise ValueError(f'unknown MIXTURE_OR_TASK_NAME {mixture_or_task_name!r}: {error}') from error
    self.name = mixture_or_task_name
    self.lengths = dict(task_feature_lengths)
    self.global_batch_size = batch_size
    self.rows = slice(0, batch_size) if rows is None else rows
    self.batch_size = len(range(batch_size)[self.rows])  # this process's rows of each batch
    self.seed = seed
    self.pack = pack
    self.unpack_single_example_rows = unpack_single_example_rows and pack
    self._train_stream = None

  def _dataset(self, split: str, shuffle: bool, num_epochs):
    try:
      return self._batched_dataset(split, shuffle, num_epochs)
    except Exception as error:  # pylint: disable=broad-except  (TFDS fails in many ways)
      not_prepared = _not_prepared_error(self.name)
      if not_prepared is None:
        raise
      raise not_prepared from error

  def _batched_dataset(self, split: str, shuffle: bool, num_epochs):
    """Global batches, the same on every process."""
    # try_in_mem_cache=False: caching small splits in memory would read TFDS split sizes,
    # which mock data (tests) lacks, and buys little for a streaming trainer.
    examples = seqio.get_mixture_or_task(self.name).get_dataset(
        self.lengths, split=split, use_cached=False, shuffle=shuffle, num_epochs=num_epochs,
        seed=self.seed, try_in_mem_cache=False)
    converted = seqio.EncDecFeatureConverter(pack=self.pack)(examples, self.lengths)
    return converted.batch(self.global_batch_size, drop_remainder=True)

  def _mine(self, batches: Iterator[Mapping[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global batch."""
    if self.batch_size == self.global_batch_size:
      yield from batches
      return
    for batch in batches:
      yield {k: v[self.rows] for k, v in batch.items()}

  def _train(self, take: bool = False):
    """The endless, shuffled train batches. The pipeline takes 0.2-1.5 CPU-s to build, so the one
    `example_batch` builds is kept for the next `train_batches` (`take`), whose stream must come
    from a dataset not iterated before: a second iteration of one shuffles differently."""
    built = self._train_stream or self._dataset('train', shuffle=True, num_epochs=None)
    self._train_stream = None if take else built
    return built

  def example_batch(self) -> dict[str, np.ndarray]:
    """Zeros with the shapes and dtypes of a train batch (for shape-only initialisation)."""
    spec = self._train().element_spec
    return {k: np.zeros((self.batch_size, *v.shape[1:]), v.dtype.as_numpy_dtype)
            for k, v in spec.items()}

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """An endless, shuffled stream, positioned after `start_step` batches.

    With `unpack_single_example_rows`, batches of one-example rows come unpacked, and the first
    batch of a form (packed / unpacked) after the stream's first batch prints a note: the step
    compiles for it.
    """
    batches = self._train(take=True).skip(start_step).as_numpy_iterator()
    if self.unpack_single_example_rows:
      batches = _unpacked_where_possible(batches, first_step=start_step + 1)
    return self._mine(batches)

  def eval_batches(self, split: str, steps: int) -> Iterator[dict[str, np.ndarray]]:
    """The first `steps` batches of `split`, in order."""
    return self._mine(
        self._dataset(split, shuffle=False, num_epochs=1).take(steps).as_numpy_iterator())

  def eval_examples(self, split: str, count: int):
    """The first `count` unbatched, not feature-converted examples of `split` (for decoding).

    Seeded like the run, so random preprocessing (span corruption's noise) is the same at the
    end of training, in `eval` and in `infer`.
    """
    return seqio.get_mixture_or_task(self.name).get_dataset(
        self.lengths, split=split, use_cached=False, shuffle=False, num_epochs=1, seed=self.seed,
        try_in_mem_cache=False).take(count).as_numpy_iterator()
