"""Hyperbolic attention: Poincare-ball distance, learned curvature and temperature, safe numerics."""
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import hyperbolic
from tests.attention import helpers
from tests.attention import reference


def test_distance_equals_the_mobius_addition_formula():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(1, 5, 2, 4)) * 0.7
  w = rng.normal(size=(1, 6, 2, 4)) * 0.7
  c = np.array([0.5, 2.0])
  x, x_gap = hyperbolic.exp_map_origin(jnp.asarray(v, jnp.float32), jnp.asarray(c, jnp.float32))
  y, y_gap = hyperbolic.exp_map_origin(jnp.asarray(w, jnp.float32), jnp.asarray(c, jnp.float32))
  got = hyperbolic.poincare_distance(x, x_gap, y, y_gap, jnp.asarray(c, jnp.float32))
  xs, ys = np.asarray(x, np.float64)[:, :, None], np.asarray(y, np.float64)[:, None]
  gap = np.linalg.norm(reference.mobius_add(-xs, ys, c[None, None, None, :, None]), axis=-1)
  want = np.transpose(2 / np.sqrt(c) * np.arctanh(np.sqrt(c) * gap), (0, 3, 1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(x_gap, 1 - c * np.sum(np.asarray(x, np.float64) ** 2, -1),
                             rtol=1e-4)


def test_points_far_out_stay_inside_the_ball_with_finite_logits_and_gradients():
  module = helpers.build('hyperbolic')
  x = 1e4 * helpers.inputs(0)  # every projection maps to the boundary
  variables = helpers.init(module, x)
  loss = lambda p, x: jnp.sum(module.apply({'params': p}, x, x) ** 2)
  value, (grads, x_grad) = jax.value_and_grad(loss, argnums=(0, 1))(variables['params'], x)
  assert np.isfinite(value)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.all(np.isfinite(x_grad))
  # The same token as query and key (identical projections): distance ~0, finite gradient.
  same = {**variables['params'], 'key': variables['params']['query']}
  value, grads = jax.value_and_grad(loss)(same, helpers.inputs(1))
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_curvature_and_temperature_are_positive_learned_per_head_parameters():
  module = helpers.build('hyperbolic', init_curvature=0.5, init_temperature=2.0)
  x = helpers.inputs(2)
  variables = helpers.init(module, x)
  params = variables['params']
  np.testing.assert_allclose(jax.nn.softplus(params['curvature']) + 1e-6, [0.5] * 2, rtol=1e-5)
  np.testing.assert_allclose(jax.nn.softplus(params['temperature']) + 1e-6, [2.0] * 2, rtol=1e-5)
  grads = jax.grad(lambda p: jnp.sum(module.apply({'params': p}, x, x) ** 2))(params)
  assert np.all(np.abs(grads['curvature']) > 0) and np.all(np.abs(grads['temperature']) > 0)


def test_no_query_key_dimension_tensor_is_formed():
  module = helpers.build('hyperbolic')
  x_q, x_kv = helpers.inputs(0, length=5), helpers.inputs(1, length=7)
  variables = helpers.init(module, x_q, x_kv)
  loss = lambda p: jnp.sum(module.apply({'params': p}, x_q, x_kv) ** 2)
  shapes = helpers.traced_shapes(jax.make_jaxpr(jax.grad(loss))(variables['params']))
  assert not any(len(s) == 5 for s in shapes)
