"""Synthetic batches have the feature converter's layout, packed and unpacked."""
import numpy as np

from synth_jax.benchmark import batches


def test_synthetic_packed_batch_is_laid_out_like_the_feature_converter():
  batch = batches.synthetic_batch(6, 64, 24, vocab_size=100, pack=True, seed=3)
  assert set(batch) == {'encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions',
                        'decoder_input_tokens', 'decoder_target_tokens', 'decoder_segment_ids',
                        'decoder_positions', 'decoder_loss_weights'}
  for row in range(6):
    for side, tokens in (('encoder', 'encoder_input_tokens'), ('decoder', 'decoder_target_tokens')):
      ids, positions = batch[f'{side}_segment_ids'][row], batch[f'{side}_positions'][row]
      assert ids.max() >= 2  # several examples share the row
      np.testing.assert_array_equal(ids > 0, batch[tokens][row] > 0)
      for segment in range(1, ids.max() + 1):
        where = np.flatnonzero(ids == segment)
        np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
        np.testing.assert_array_equal(positions[where], np.arange(len(where)))
        assert batch[tokens][row, where[-1]] == 1  # EOS ends each example
        if side == 'decoder':
          targets = batch['decoder_target_tokens'][row, where]
          np.testing.assert_array_equal(batch['decoder_input_tokens'][row, where],
                                        np.append(0, targets[:-1]))
  np.testing.assert_array_equal(batch['decoder_loss_weights'], batch['decoder_target_tokens'] > 0)


def test_synthetic_unpacked_batch_has_one_padded_example_per_row():
  batch = batches.synthetic_batch(5, 40, 10, vocab_size=100, pack=False, seed=1)
  assert set(batch) == {'encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                        'decoder_loss_weights'}
  for tokens in batch['encoder_input_tokens']:
    length = int((tokens > 0).sum())
    assert 20 <= length <= 40 and (tokens[:length] > 0).all() and tokens[length - 1] == 1
