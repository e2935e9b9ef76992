"""Rotary attention: relative positions, packing and decoding at the right positions, any length."""
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import masks
from synth_jax.attention import rotary
from tests.attention import helpers


def test_rotated_dot_products_depend_only_on_the_position_difference():
  rng = np.random.default_rng(0)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32) for _ in range(2))
  dot = lambda pq, pk: float(jnp.sum(rotary.rotate(q, jnp.array([[pq]]), 10000.0)
                                     * rotary.rotate(k, jnp.array([[pk]]), 10000.0)))
  np.testing.assert_allclose(dot(5, 2), dot(103, 100), rtol=1e-4)
  np.testing.assert_allclose(dot(0, 0), float(jnp.sum(q * k)), rtol=1e-5)
  assert abs(dot(5, 2) - dot(5, 4)) > 1e-3


def test_runs_at_lengths_beyond_any_maximum_and_shifting_all_positions_changes_nothing():
  module = helpers.build('rotary', max_query_length=4, max_key_length=4)
  x = helpers.inputs(0, length=32)
  variables = helpers.init(module, helpers.inputs(0, length=4))
  assert module.apply(variables, x, x).shape == (2, 32, helpers.EMBED)
  # One example packed after a 5-token one reads positions 0.. within its segment: alone.
  mask = masks.Mask.for_self_attention(jnp.ones((2, 11), jnp.int32),
                                       jnp.array([[1] * 5 + [2] * 6] * 2))
  packed = module.apply(variables, x[:, :11], x[:, :11], mask)
  alone = module.apply(variables, x[:, 5:11], x[:, 5:11])
  np.testing.assert_allclose(packed[:, 5:], alone, rtol=1e-5, atol=1e-5)


def test_no_relative_position_bias_is_added():
  module = helpers.build('rotary')
  x = helpers.inputs(1)
  variables = helpers.init(module, x)
  bias = helpers.random_bias(0, 6, 6)
  np.testing.assert_array_equal(module.apply(variables, x, x, None, bias),
                                module.apply(variables, x, x))


def test_odd_head_dim_is_a_clear_error():
  module = helpers.build('rotary', head_dim=7)
  x = helpers.inputs(0)
  try:
    module.init(jax.random.key(0), x, x)
  except ValueError as error:
    assert 'head_dim=7 must be even' in str(error)
  else:
    raise AssertionError('odd head_dim was accepted')
