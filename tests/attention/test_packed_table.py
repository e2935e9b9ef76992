"""The packed score-map gather: values and an exact, scatter-free gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import network
from synth_jax.attention import packed_table

# Rows of segment ids: several segments and trailing padding, one segment, odd layouts.
SEGMENT_IDS = jnp.array([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0],
                         [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                         [1, 2, 2, 2, 2, 2, 2, 2, 2, 0],
                         [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])


def naive(table, positions):
  """The plain gather, then the same-segment mask: what autodiff would differentiate."""
  starts = jnp.arange(positions.shape[1])[None] - positions
  same = starts[:, :, None] == starts[:, None, :]
  gathered = jnp.moveaxis(table[:, positions[:, :, None], positions[:, None, :]], 0, 1)
  return jnp.where(same[:, None], gathered, 0)


@pytest.mark.parametrize('table_shape', [(2, 10, 10), (3, 12, 11)])
def test_values_and_gradient_equal_the_plain_gather(table_shape):
  positions = network.segment_positions(SEGMENT_IDS)
  table = jax.random.normal(jax.random.key(0), table_shape)
  out = packed_table.gather_within_segments(table, positions)
  assert out.shape == (4, table_shape[0], 10, 10)
  np.testing.assert_array_equal(out, naive(table, positions))
  # Row 0, token 3 (segment 2, position 0) sees table row 0 for its own segment's keys only.
  np.testing.assert_array_equal(out[0, :, 3, 3:5], table[:, 0, 0:2])
  np.testing.assert_array_equal(out[0, :, 3, :3], 0.0)

  cotangent = jax.random.normal(jax.random.key(1), out.shape)
  got = jax.grad(lambda t: jnp.sum(packed_table.gather_within_segments(t, positions)
                                   * cotangent))(table)
  want = jax.grad(lambda t: jnp.sum(naive(t, positions) * cotangent))(table)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradient_has_no_scatter():
  positions = network.segment_positions(SEGMENT_IDS)
  table = jnp.ones((2, 10, 10))
  jaxpr = jax.make_jaxpr(jax.grad(
      lambda t: jnp.sum(packed_table.gather_within_segments(t, positions) ** 2)))(table)
  assert 'scatter' not in str(jaxpr)
  naive_jaxpr = jax.make_jaxpr(jax.grad(lambda t: jnp.sum(naive(t, positions) ** 2)))(table)
  assert 'scatter' in str(naive_jaxpr)  # what it replaces
