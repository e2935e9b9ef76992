"""Learnable convex mixtures of synthesizers."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.attention import helpers


def test_members_live_under_their_names_with_one_shared_value_projection():
  module = helpers.build('random+dense+vanilla')
  params = helpers.init(module, helpers.inputs(0))['params']
  assert set(params) == {'mixture_logits', 'random', 'dense', 'vanilla', 'value', 'out'}
  assert set(params['vanilla']) == {'query', 'key'}  # no per-member value/out
  assert params['mixture_logits'].shape == (3,)


def test_weights_start_equal_and_always_sum_to_one():
  module = helpers.build('random+vanilla')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  np.testing.assert_array_equal(variables['params']['mixture_logits'], [0.0, 0.0])
  for w in ([0.0, 0.0], [3.0, -1.0], [-20.0, 5.0]):
    params = {**variables['params'], 'mixture_logits': jnp.array(w)}
    probs = module.apply({'params': params}, x, x, probabilities_only=True)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_mixture_is_the_weighted_sum_of_member_probabilities():
  module = helpers.build('random+vanilla')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  params = {**variables['params'], 'mixture_logits': jnp.array([1.0, -0.5])}
  mixed = module.apply({'params': params}, x, x, probabilities_only=True)
  random_probs = helpers.build('random').apply(
      {'params': params['random']}, x, x, probabilities_only=True)
  vanilla_probs = helpers.build('vanilla').apply(
      {'params': params['vanilla']}, x, x, probabilities_only=True)
  a = jax.nn.softmax(jnp.array([1.0, -0.5]))
  np.testing.assert_allclose(mixed, a[0] * random_probs + a[1] * vanilla_probs, rtol=1e-5)


def test_mixture_weights_are_learned():
  module = helpers.build('random+vanilla')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  grad = jax.grad(lambda p: jnp.sum(module.apply({'params': p}, x, x) ** 2))(variables['params'])
  assert np.all(np.abs(grad['mixture_logits']) > 0)
