"""Synthetic training batches: random tokens in `seqio.EncDecFeatureConverter`'s layout.

The benchmark needs batches of the right shapes and packing, not text: nothing here imports seqio
or TensorFlow.
"""
import numpy as np


def synthetic_batch(batch_size: int, inputs_length: int, targets_length: int, vocab_size: int,
                    pack: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens laid out like `seqio.EncDecFeatureConverter(pack=pack)`'s output.

  Token 0 is padding and 1 ends each example (EOS). Unpacked: one example per row, of a random
  length between half and all of the row, then padding; four features. Packed: examples of a
  quarter to half the row, one after another while both their inputs and targets fit, with
  segment ids (1, 2, ...), positions restarting at 0, and decoder inputs shifted right within each
  segment (0 starts every segment).
  """
  rng = np.random.default_rng(seed)
  shape_in, shape_out = (batch_size, inputs_length), (batch_size, targets_length)
  features = {name: np.zeros(shape, np.int32) for name, shape in (
      ('encoder_input_tokens', shape_in), ('encoder_segment_ids', shape_in),
      ('encoder_positions', shape_in), ('decoder_target_tokens', shape_out),
      ('decoder_input_tokens', shape_out), ('decoder_segment_ids', shape_out),
      ('decoder_positions', shape_out))}

  def example(length):
    return np.append(rng.integers(2, vocab_size, length - 1), 1)

  for row in range(batch_size):
    start_in = start_out = 0
    segment = 0
    while True:
      if pack:
        n_in = int(rng.integers(max(1, inputs_length // 4), max(1, inputs_length // 2) + 1))
        n_out = max(1, n_in * targets_length // inputs_length)
      else:
        n_in = int(rng.integers(max(1, inputs_length // 2), inputs_length + 1))
        n_out = int(rng.integers(max(1, targets_length // 2), targets_length + 1))
      if start_in + n_in > inputs_length or start_out + n_out > targets_length:
        break
      segment += 1
      inputs, targets = example(n_in), example(n_out)
      span_in, span_out = slice(start_in, start_in + n_in), slice(start_out, start_out + n_out)
      features['encoder_input_tokens'][row, span_in] = inputs
      features['encoder_segment_ids'][row, span_in] = segment
      features['encoder_positions'][row, span_in] = np.arange(n_in)
      features['decoder_target_tokens'][row, span_out] = targets
      features['decoder_input_tokens'][row, span_out] = np.append(0, targets[:-1])
      features['decoder_segment_ids'][row, span_out] = segment
      features['decoder_positions'][row, span_out] = np.arange(n_out)
      start_in, start_out = start_in + n_in, start_out + n_out
      if not pack:
        break
  features['decoder_loss_weights'] = (features['decoder_target_tokens'] > 0).astype(np.int32)
  if not pack:
    for name in ('encoder_segment_ids', 'encoder_positions', 'decoder_segment_ids',
                 'decoder_positions'):
      del features[name]
  return features
