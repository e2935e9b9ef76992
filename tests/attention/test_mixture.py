"""Learnable convex mixtures of synthesizers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import kernels
from synth_jax.attention import masks
from synth_jax.attention import mixture
from tests.attention import helpers


def test_members_live_under_their_names_with_one_shared_value_projection():
  module = helpers.build('random+dense+vanilla')
  params = helpers.init(module, helpers.inputs(0))['params']
  assert set(params) == {'mixture_logits', 'random', 'dense', 'vanilla', 'value', 'out'}
  assert set(params['vanilla']) == {'query', 'key'}  # no per-member value/out
  assert params['mixture_logits'].shape == (3,)


def test_a_mixture_without_a_member_builder_says_to_build_it_by_name():
  module = mixture.MixtureAttention(members=('random', 'vanilla'), num_heads=helpers.HEADS)
  with pytest.raises(ValueError, match=r"build\('random\+vanilla'"):
    helpers.init(module, helpers.inputs(0))


def test_weights_start_equal_and_always_sum_to_one():
  module = helpers.build('random+vanilla')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  np.testing.assert_array_equal(variables['params']['mixture_logits'], [0.0, 0.0])
  for w in ([0.0, 0.0], [3.0, -1.0], [-20.0, 5.0]):
    params = {**variables['params'], 'mixture_logits': jnp.array(w)}
    probs = module.apply({'params': params}, x, x, None, None, method='probabilities')
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def random_vanilla_mixture(seed, mixture_logits):
  """A random+vanilla module, inputs, and parameters with the given mixture logits."""
  module = helpers.build('random+vanilla')
  x = helpers.inputs(seed)
  variables = helpers.init(module, x)
  return module, x, {**variables['params'], 'mixture_logits': jnp.array(mixture_logits)}


def test_mixture_is_the_weighted_sum_of_member_probabilities():
  module, x, params = random_vanilla_mixture(0, [1.0, -0.5])
  mixed = module.apply({'params': params}, x, x, None, None, method='probabilities')
  random_probs = helpers.build('random').apply(
      {'params': params['random']}, x, x, None, None, method='probabilities')
  vanilla_probs = helpers.build('vanilla').apply(
      {'params': params['vanilla']}, x, x, None, None, method='probabilities')
  a = jax.nn.softmax(jnp.array([1.0, -0.5]))
  np.testing.assert_allclose(mixed, a[0] * random_probs + a[1] * vanilla_probs, rtol=1e-5)


def test_mixture_weights_are_learned():
  module = helpers.build('random+vanilla')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  grad = jax.grad(lambda p: jnp.sum(module.apply({'params': p}, x, x) ** 2))(variables['params'])
  assert np.all(np.abs(grad['mixture_logits']) > 0)


def test_output_is_the_mixed_probabilities_applied_to_the_shared_value():
  """Members mix the value each on its own path; the result is out(sum_i a_i P_i V)."""
  module, x, params = random_vanilla_mixture(1, [0.3, -0.8])
  probs = module.apply({'params': params}, x, x, None, None, method='probabilities')
  value = jnp.einsum('ble,ehd->blhd', x, params['value']['kernel'].reshape(
      helpers.EMBED, helpers.HEADS, helpers.HEAD_DIM))
  mixed = jnp.einsum('bhqk,bkhd->bqhd', probs, value)
  want = jnp.einsum('bqhd,hde->bqe', mixed, params['out']['kernel'].reshape(
      helpers.HEADS, helpers.HEAD_DIM, helpers.EMBED))
  np.testing.assert_allclose(module.apply({'params': params}, x, x), want, rtol=1e-5, atol=1e-5)


def padded_causal_mask():
  """Decoder self-attention over rows of 6 and 4 tokens (trailing padding)."""
  return masks.Mask.for_self_attention(jnp.array([[1] * 6, [1] * 4 + [0] * 2]), causal=True)


def test_members_on_their_fast_paths_give_the_reference_result():
  x = helpers.inputs(2)
  mask = padded_causal_mask()
  bias = helpers.random_bias(3, 6, 6)
  reference = helpers.build('random+vanilla')
  variables = helpers.init(reference, x)
  want = reference.apply(variables, x, x, mask, bias)
  got = helpers.build('random+vanilla', dispatch=kernels.dispatch_for('xla')).apply(
      variables, x, x, mask, bias)
  valid = np.asarray(mask.query_valid)
  np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)


def test_mixtures_of_shared_score_members_never_form_per_example_probabilities():
  x = helpers.inputs(4)
  mask = padded_causal_mask()
  module = helpers.build('random+factorized_random', dispatch=kernels.dispatch_for('fast'))
  variables = helpers.init(module, x)
  loss = lambda params: jnp.sum(module.apply({**variables, 'params': params}, x, x, mask) ** 2)
  shapes = helpers.traced_shapes(jax.make_jaxpr(jax.grad(loss))(variables['params']))
  assert (2, helpers.HEADS, 6, 6) not in shapes
  reference = helpers.build('random+factorized_random')
  loss = lambda params: jnp.sum(reference.apply({**variables, 'params': params}, x, x, mask) ** 2)
  assert (2, helpers.HEADS, 6, 6) in helpers.traced_shapes(
      jax.make_jaxpr(jax.grad(loss))(variables['params']))
