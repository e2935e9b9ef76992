"""Cosine attention: normalized q and k, a learned clamped per-head scale."""
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import cosine
from tests.attention import helpers


def test_scale_starts_at_sqrt_head_dim_so_logits_start_in_vanillas_range():
  x = helpers.inputs(0, batch=4, length=8, embed=64)
  options = dict(num_heads=4, head_dim=16, max_query_length=8, max_key_length=8)
  spread = {}
  for name in ('cosine', 'vanilla'):
    module = helpers.build(name, **options)
    variables = helpers.init(module, x)
    probs = module.apply(variables, x, x, None, None, method='probabilities')
    spread[name] = float(jnp.std(jnp.log(probs)))
  np.testing.assert_allclose(
      helpers.init(helpers.build('cosine', **options), x)['params']['logit_scale'],
      [0.5 * np.log(16)] * 4, rtol=1e-6)
  assert 0.5 < spread['cosine'] / spread['vanilla'] < 2.0


def test_logits_ignore_query_and_key_magnitudes():
  module = helpers.build('cosine')
  x = helpers.inputs(1)
  variables = helpers.init(module, x)
  params = variables['params']
  scaled = {**params, 'query': {'kernel': 7.0 * params['query']['kernel']},
            'key': {'kernel': 0.1 * params['key']['kernel']}}
  probs = module.apply(variables, x, x, None, None, method='probabilities')
  probs_scaled = module.apply({'params': scaled}, x, x, None, None, method='probabilities')
  np.testing.assert_allclose(probs_scaled, probs, rtol=1e-4, atol=1e-6)


def test_scale_is_clamped_at_one_hundred_and_the_clamp_stops_its_gradient():
  module = helpers.build('cosine')
  x = helpers.inputs(2)
  variables = helpers.init(module, x)
  big = {**variables['params'], 'logit_scale': jnp.full((helpers.HEADS,), 10.0)}
  at_max = {**variables['params'], 'logit_scale': jnp.full((helpers.HEADS,), cosine.MAX_LOG_SCALE)}
  out = lambda p: module.apply({'params': p}, x, x)
  np.testing.assert_allclose(out(big), out(at_max), rtol=1e-6)
  grad = jax.grad(lambda p: jnp.sum(out(p) ** 2))(big)
  np.testing.assert_array_equal(grad['logit_scale'], 0.0)
