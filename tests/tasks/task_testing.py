"""Helpers shared by the task tests: run a task's text formatting on
hand-written examples, and a whole task on TFDS mock data through the
feature converter the trainer uses."""
import functools
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

UNPACKED_KEYS = {'encoder_input_tokens', 'decoder_target_tokens',
                 'decoder_input_tokens', 'decoder_loss_weights'}
PACKED_KEYS = UNPACKED_KEYS | {'encoder_segment_ids', 'decoder_segment_ids',
                               'encoder_positions', 'decoder_positions'}


def _text(value):
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray) and value.dtype == object:
    return [_text(v) for v in value]
  return value


def format_examples(task: seqio.Task,
                    examples: List[Mapping[str, Any]]) -> List[Dict]:
  """The task's preprocessors before tokenization, on raw TFDS-like examples.

  Returns:
    The formatted examples as Python values (bytes decoded to str).
  """
  results = []
  for example in examples:
    ds = tf.data.Dataset.from_tensors(example)
    for preprocessor in task.preprocessors:
      if preprocessor is seqio.preprocessors.tokenize:
        break
      ds = preprocessor(ds)
    results.extend({k: _text(v) for k, v in ex.items()}
                   for ex in ds.as_numpy_iterator())
  return results


def task_examples(task: seqio.Task, split: str, lengths: Mapping[str, int],
                  num_examples: int = 4, as_dataset_fn=None,
                  seed: Optional[int] = 0) -> List[Dict]:
  """The task's preprocessed examples, read from TFDS mock data."""
  with tfds.testing.mock_data(num_examples=num_examples,
                              as_dataset_fn=as_dataset_fn):
    ds = task.get_dataset(lengths, split=split, shuffle=False, seed=seed,
                          try_in_mem_cache=False)
    return list(ds.as_numpy_iterator())


def converted_examples(tasks_and_splits: Sequence[Tuple[seqio.Task, str]],
                       lengths: Mapping[str, int], pack: bool = False,
                       num_examples: int = 4, as_dataset_fn=None
                       ) -> List[Dict[str, np.ndarray]]:
  """Examples of the tasks, read from TFDS mock data, after the trainer's
  EncDecFeatureConverter.

  The tasks' datasets are concatenated in order before one converter, since
  building a converter costs far more than running it.
  """
  with tfds.testing.mock_data(num_examples=num_examples,
                              as_dataset_fn=as_dataset_fn):
    datasets = [
        task.get_dataset(lengths, split=split, shuffle=False, seed=0,
                         try_in_mem_cache=False).map(
                             lambda ex: {'inputs': ex['inputs'],
                                         'targets': ex['targets']})
        for task, split in tasks_and_splits]
    ds = functools.reduce(lambda a, b: a.concatenate(b), datasets)
    ds = seqio.EncDecFeatureConverter(pack=pack)(ds, lengths)
    return list(ds.as_numpy_iterator())


def assert_converted(examples: List[Dict[str, np.ndarray]],
                     lengths: Mapping[str, int], pack: bool = False) -> None:
  """Feature keys, int32 dtypes and padded lengths of converted examples."""
  assert examples
  for ex in examples:
    assert set(ex) == (PACKED_KEYS if pack else UNPACKED_KEYS)
    for key, value in ex.items():
      expected = lengths['inputs'] if key.startswith('encoder') else (
          lengths['targets'])
      assert value.dtype == np.int32, key
      assert value.shape == (expected,), key
    # Teacher forcing: decoder inputs are the targets shifted right by one.
    if not pack:
      np.testing.assert_array_equal(ex['decoder_input_tokens'][1:],
                                    ex['decoder_target_tokens'][:-1])
      assert ex['decoder_input_tokens'][0] == 0
