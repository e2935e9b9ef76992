"""seqio batches for the trainer: shapes, determinism, resumable position."""
import numpy as np
import pytest

from synth_jax import data
from tests import fixtures


def test_batches_are_packed_feature_converted_and_resume_at_a_step():
  dataset = data.Dataset(fixtures.register_copy_task(), fixtures.LENGTHS, batch_size=4, seed=3)
  example = dataset.example_batch()
  assert set(example) == {'encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions',
                          'decoder_input_tokens', 'decoder_target_tokens', 'decoder_segment_ids',
                          'decoder_positions', 'decoder_loss_weights'}
  assert all(v.shape == (4, 16) for v in example.values())
  stream = dataset.train_batches()
  first = [next(stream) for _ in range(3)]
  resumed = next(dataset.train_batches(start_step=2))
  for key in first[2]:
    np.testing.assert_array_equal(resumed[key], first[2][key])
  assert not np.array_equal(first[0]['encoder_input_tokens'], first[1]['encoder_input_tokens'])


def test_unknown_task_is_a_clear_error():
  with pytest.raises(ValueError, match=r"unknown MIXTURE_OR_TASK_NAME 'no_such_task'"):
    data.Dataset('no_such_task', fixtures.LENGTHS, batch_size=4)
