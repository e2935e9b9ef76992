"""Hyperbolic attention: Poincare-ball distance, learned curvature and temperature, safe numerics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import hyperbolic
from synth_jax.attention import kernels
from synth_jax.attention.kernels import blockwise
from tests.attention import helpers
from tests.attention import reference


def ball_distances(v, w, c):
  """d_c `[b, h, q, k]` (float32) by the feature dot product, and exp_0's points in float64."""
  v, w, c32 = (jnp.asarray(a, jnp.float32) for a in (v, w, c))
  scale = 1 / jnp.sqrt(c32)
  got = -hyperbolic.negative_distance(scale, hyperbolic.ball_query_features(v, c32),
                                      hyperbolic.ball_key_features(w, c32))
  return np.asarray(got), exp0(v, c), exp0(w, c)


def exp0(v, c):
  v = np.asarray(v, np.float64)
  norm = np.linalg.norm(v, axis=-1, keepdims=True)
  return np.tanh(np.sqrt(c)[:, None] * norm) * v / (np.sqrt(c)[:, None] * norm)


def mobius_distance(x, y, c):
  """2/sqrt(c) artanh(sqrt(c) |(-x) (+)_c y|) `[b, h, q, k]` in float64 (Ganea et al. 2018)."""
  xs, ys = x[:, :, None], y[:, None]
  gap = np.linalg.norm(reference.mobius_add(-xs, ys, c[None, None, None, :, None]), axis=-1)
  return np.transpose(2 / np.sqrt(c) * np.arctanh(np.sqrt(c) * gap), (0, 3, 1, 2))


def test_distance_equals_the_mobius_addition_formula():
  rng = np.random.default_rng(0)
  v = rng.normal(size=(1, 5, 2, 4)) * 0.7
  w = rng.normal(size=(1, 6, 2, 4)) * 0.7
  c = np.array([0.5, 2.0])
  got, x, y = ball_distances(v, w, c)
  assert got.shape == (1, 2, 5, 6)
  np.testing.assert_allclose(got, mobius_distance(x, y, c), rtol=1e-4, atol=1e-4)


def expanded_distances(x, y):
  """arcosh(1 + 2(|x|^2 + |y|^2 - 2 x.y) / gaps) in float32 from float64 points (c = 1): the
  matmul form in the points' own coordinates."""
  x32, y32 = x.astype(np.float32), y.astype(np.float32)
  dot = np.einsum('bqhd,bkhd->bhqk', x32, y32)
  x_sq = np.sum(x32 ** 2, -1).transpose(0, 2, 1)[..., None]
  y_sq = np.sum(y32 ** 2, -1).transpose(0, 2, 1)[..., None, :]
  r = 2 * np.maximum(x_sq + y_sq - 2 * dot, 0) / ((1 - x_sq) * (1 - y_sq))
  return np.arccosh(1 + np.maximum(r, 1e-7))


def test_distance_is_as_precise_as_the_expanded_form_near_the_boundary():
  """Rapidities up to 4 (c|x|^2 up to 0.9987), pairs from distance ~0.003 to ~8: the feature dot
  product's float32 error is of the order of the expanded matmul form's (any matmul form loses
  nearby pairs' digits near the boundary: terms of size cosh^2 u cosh^2 w cancel). Measured
  2026-12-07: 0.19 against 0.08 at most, as the form before 39d6b7a (0.20)."""
  rng = np.random.default_rng(1)
  v = rng.normal(size=(1, 64, 1, 8))
  v *= rng.uniform(0.05, 4.0, size=(1, 64, 1, 1)) / np.linalg.norm(v, axis=-1, keepdims=True)
  w = np.concatenate([v + 1e-3 * rng.normal(size=v.shape), rng.normal(size=v.shape)], axis=1)
  c = np.array([1.0])
  got, x, y = ball_distances(v, w, c)
  want = mobius_distance(x, y, c)
  error, expanded_error = np.abs(got - want), np.abs(expanded_distances(x, y) - want)
  assert np.max(error) <= 3 * np.max(expanded_error) + 1e-5
  assert np.mean(error) <= 3 * np.mean(expanded_error)
  far = np.ones_like(want, bool)
  far[0, 0, np.arange(64), np.arange(64)] = False
  assert np.max(error[far]) < 1e-5 and np.max(want) > 7


@pytest.mark.parametrize('rapidity', [1.0, 3.0, 5.0, 5.9])
def test_nearby_points_keep_their_distance_at_every_rapidity(rapidity):
  """Pairs 0.01 apart (in v) at one rapidity, up to c|x|^2 = 1 - 3e-5: the relative error stays
  within 3x the expanded form's (at 5: 0.030 against 0.014). 39d6b7a's features, with sinh 2u
  computed apart from sinh u and cosh u and |d|^2 taken as 1, lost every digit at 5.9."""
  rng = np.random.default_rng(2)
  v = rng.normal(size=(1, 64, 1, 16))
  v *= rapidity / np.linalg.norm(v, axis=-1, keepdims=True)
  w = v + 0.01 * rng.normal(size=v.shape) / 4
  c = np.array([1.0])
  got, x, y = ball_distances(v, w, c)
  pairs = np.arange(64)
  want = mobius_distance(x, y, c)[0, 0, pairs, pairs]
  relative = lambda d: np.max(np.abs(d[0, 0, pairs, pairs] - want) / want)
  assert relative(got) <= 3 * relative(expanded_distances(x, y)) + 1e-3


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


def test_the_blockwise_path_keeps_the_projections_not_the_float32_features(monkeypatch):
  """What `blockwise.py` saves for its backward pass is the `Scores`' queries and keys: the
  bf16 projections (head_dim wide), whose features each block recomputes."""
  seen = []
  attend = blockwise.blockwise_attention
  monkeypatch.setattr(blockwise, 'blockwise_attention',
                      lambda block, *args: seen.append(block) or attend(block, *args))
  module = helpers.build('hyperbolic', dtype=jnp.bfloat16,
                         dispatch=kernels.dispatch_for('blockwise'))
  x = helpers.inputs(3)
  variables = helpers.init(module, x)
  seen.clear()
  got = module.apply(variables, x, x)
  (block,) = seen
  for features in (block.query, block.key):
    assert features.shape == (2, 6, helpers.HEADS, helpers.HEAD_DIM)
    assert features.dtype == jnp.bfloat16
  want = helpers.build('hyperbolic', dtype=jnp.bfloat16).apply(variables, x, x)
  np.testing.assert_allclose(np.float32(got), np.float32(want), atol=2e-2)
