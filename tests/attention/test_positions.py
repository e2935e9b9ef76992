"""Position-indexed scores read at a Mask's positions equal direct indexing in NumPy."""
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import masks
from synth_jax.attention import positions


def table(heads=2, max_q=6, max_k=7):
  return jax.random.normal(jax.random.key(0), (heads, max_q, max_k))


def test_unpacked_rows_are_a_shared_slice_at_the_decode_offset():
  t = table()
  mask = masks.Mask.for_self_attention(jnp.ones((3, 4), jnp.int32))
  got = positions.table_logits(t, mask, 4, 4)
  assert got.shape == (1, 2, 4, 4)
  np.testing.assert_array_equal(got[0], np.asarray(t)[:, :4, :4])
  step = masks.Mask.everything_visible(3, 1, 5).at_decode_step(jnp.array(3))
  np.testing.assert_array_equal(positions.table_logits(t, step, 1, 5)[0], np.asarray(t)[:, 3:4, :5])


def test_packed_rows_read_each_pair_at_its_positions_within_the_segment():
  t = np.asarray(table())
  segments = jnp.array([[1, 1, 1, 2, 2], [1, 2, 2, 2, 2]])
  mask = masks.Mask.for_self_attention(jnp.ones_like(segments), segments)
  got = np.asarray(positions.table_logits(jnp.asarray(t), mask, 5, 5))
  pos = np.asarray(mask.query_positions)
  want = np.stack([t[:, pos[b][:, None], pos[b][None, :]] for b in range(2)])
  np.testing.assert_array_equal(got, want)


def test_key_columns_take_the_keys_positions():
  scores = jax.random.normal(jax.random.key(1), (2, 2, 3, 6))
  unpacked = masks.Mask.for_self_attention(jnp.ones((2, 3), jnp.int32))
  np.testing.assert_array_equal(positions.key_columns(scores, unpacked, 3), scores[..., :3])
  segments = jnp.array([[1, 2, 2], [1, 1, 1]])
  packed = masks.Mask.for_self_attention(jnp.ones_like(segments), segments)
  got = np.asarray(positions.key_columns(scores, packed, 3))
  np.testing.assert_array_equal(got[0], np.asarray(scores)[0][..., [0, 0, 1]])
  np.testing.assert_array_equal(got[1], np.asarray(scores)[1][..., [0, 1, 2]])
