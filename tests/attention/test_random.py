"""Random and factorized random synthesizers (trainable and fixed)."""
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import core
from tests.attention import helpers


def test_trainable_map_is_a_parameter_per_head_covering_max_lengths():
  module = helpers.build('random', max_query_length=8, max_key_length=5)
  x_q, x_kv = helpers.inputs(0, length=8), helpers.inputs(1, length=5)
  variables = helpers.init(module, x_q, x_kv)
  assert variables['params']['random_logits'].shape == (helpers.HEADS, 8, 5)
  assert core.FROZEN not in variables


def test_logits_ignore_the_input_and_are_shared_across_the_batch():
  module = helpers.build('random')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  probs_a = module.apply(variables, x, x, None, None, method='probabilities')
  probs_b = module.apply(variables, 3 * helpers.inputs(5), x, None, None, method='probabilities')
  assert probs_a.shape == (2, helpers.HEADS, 6, 6)
  np.testing.assert_array_equal(probs_a[0], probs_a[1])  # one map for the whole batch
  np.testing.assert_array_equal(probs_a, probs_b)
  assert module.shared_logits  # what lets the kernels normalize it once per step
  table = variables['params']['random_logits']
  np.testing.assert_allclose(probs_a[0], jax.nn.softmax(table[:, :6, :6]), rtol=1e-6)


def test_fixed_map_lives_in_the_frozen_collection():
  module = helpers.build('fixed_random')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  assert variables[core.FROZEN]['random_logits'].shape == (helpers.HEADS, 8, 8)
  assert set(variables['params']) == {'value', 'out'}


def test_fixed_map_is_bit_identical_after_an_optimizer_step_and_has_no_optimizer_state():
  module = helpers.build('fixed_random')
  x = helpers.inputs(0)
  helpers.assert_frozen_untouched(module, helpers.init(module, x), x,
                                  frozen_shapes=[(helpers.HEADS, 8, 8)])


def test_fixed_map_differs_across_seeds_and_has_the_requested_scale():
  module = helpers.build('fixed_random', max_query_length=64, max_key_length=64, init_stddev=2.0)
  x = helpers.inputs(0, length=4)
  table_0 = helpers.init(module, x, seed=0)[core.FROZEN]['random_logits']
  table_1 = helpers.init(module, x, seed=1)[core.FROZEN]['random_logits']
  assert not np.allclose(table_0, table_1)
  np.testing.assert_allclose(float(jnp.std(table_0)), 2.0, rtol=0.05)


def test_factorized_map_is_the_product_of_two_rank_k_factors():
  module = helpers.build('factorized_random', rank=3)
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  r1 = variables['params']['query_factor']
  r2 = variables['params']['key_factor']
  assert r1.shape == r2.shape == (helpers.HEADS, 8, 3)
  probs = module.apply(variables, x, x, None, None, method='probabilities')
  np.testing.assert_allclose(
      probs[0], jax.nn.softmax(np.einsum('hqr,hkr->hqk', r1[:, :6], r2[:, :6])), rtol=1e-5)


def test_factorized_default_rank_is_8():
  module = helpers.build('factorized_random')
  variables = helpers.init(module, helpers.inputs(0))
  assert variables['params']['query_factor'].shape[-1] == 8
