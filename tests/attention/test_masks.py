"""The one mask object: its dense and lengths forms, positions, decode steps, and the helpers."""
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import masks


def test_mask_helpers_build_padding_causal_and_segment_masks():
  tokens = jnp.array([[5, 6, 0]])
  padding = masks.make_attention_mask(tokens > 0, tokens > 0)
  np.testing.assert_array_equal(padding[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])
  causal = masks.make_causal_mask(tokens)
  np.testing.assert_array_equal(causal[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  segments = jnp.array([[1, 1, 2]])
  packing = masks.make_attention_mask(segments, segments, jnp.equal)
  np.testing.assert_array_equal(packing[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 1]])
  np.testing.assert_array_equal(
      masks.combine_masks(padding, causal, None)[0, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
  assert masks.combine_masks(None, None) is None


def test_decode_step_mask_hides_future_keys():
  mask = masks.Mask.everything_visible(2, 1, 4).at_decode_step(jnp.array(2))
  np.testing.assert_array_equal(mask.dense()[:, 0, 0], [[1, 1, 1, 0]] * 2)
  assert mask.lengths() is None


def test_mask_forms_agree_with_the_pairwise_helpers():
  tokens = jnp.array([[5, 6, 7, 0], [5, 0, 0, 0]])
  mask = masks.Mask.for_self_attention(tokens, causal=True)
  want = masks.combine_masks(masks.make_attention_mask(tokens > 0, tokens > 0),
                             masks.make_causal_mask(tokens))
  np.testing.assert_array_equal(mask.dense(), want > 0)
  np.testing.assert_array_equal(mask.lengths()[0], [3, 1])
  segments = jnp.array([[1, 1, 2, 0], [1, 2, 2, 2]])
  packed = masks.Mask.for_self_attention(jnp.array([[5, 6, 7, 0], [5, 6, 7, 8]]), segments)
  np.testing.assert_array_equal(packed.query_positions, [[0, 1, 0, 0], [0, 0, 1, 2]])
  np.testing.assert_array_equal(packed.dense()[1, 0], masks.make_attention_mask(
      segments, segments, jnp.equal)[1, 0] > 0)
  assert packed.lengths() is None
  explicit = masks.as_mask(want, 2, 4, 4)
  np.testing.assert_array_equal(explicit.dense(), want > 0)
  assert explicit.lengths() is None



def test_cross_attention_mask_reads_positions_of_packed_keys():
  query_segments = jnp.array([[1, 1, 2, 2]])
  key_segments = jnp.array([[1, 2, 2, 2, 0]])
  mask = masks.Mask.for_cross_attention(jnp.ones((1, 4), bool), jnp.array([[3, 4, 5, 6, 0]]),
                                        query_segments, key_segments)
  np.testing.assert_array_equal(mask.key_positions, [[0, 0, 1, 2, 0]])
  np.testing.assert_array_equal(mask.dense()[0, 0], [[1, 0, 0, 0, 0], [1, 0, 0, 0, 0],
                                                     [0, 1, 1, 1, 0], [0, 1, 1, 1, 0]])
  assert mask.lengths() is None
  unpacked = masks.Mask.for_cross_attention(jnp.array([[1, 1, 0]], bool), jnp.array([[3, 0]]))
  np.testing.assert_array_equal(unpacked.lengths()[0], [2])
  np.testing.assert_array_equal(unpacked.lengths()[1], [1])
