"""Rule-factored Adafactor against a NumPy reference; factor plans; schedules."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import optimizer


def boxed(value, names):
  return nn.Partitioned(value, names=names)


def test_factor_plan_follows_logical_axis_roles():
  params = {
      'kernel': boxed(jnp.zeros((256, 512)), ('embed', 'joined_kv')),
      'out': boxed(jnp.zeros((512, 256)), ('joined_kv', 'embed')),
      'random_logits': boxed(jnp.zeros((4, 128, 256)),
                             ('heads', 'synth_query_length', 'synth_key_length')),
      'dense_2': boxed(jnp.zeros((4, 64, 512)), ('heads', 'synth_hidden', 'synth_key_length')),
      'small': boxed(jnp.zeros((64, 512)), ('embed', 'joined_kv')),
      'relpos': boxed(jnp.zeros((12, 32)), ('heads', 'relpos_buckets')),
      'scale': boxed(jnp.zeros((256,)), ('embed',)),
  }
  plan = optimizer.factor_plan(params)
  assert plan['kernel'] == optimizer.FactoredDims(0, 1)
  assert plan['out'] == optimizer.FactoredDims(1, 0)
  assert plan['random_logits'] == optimizer.FactoredDims(1, 2)  # heads is a batch of matrices
  assert plan['dense_2'] == optimizer.FactoredDims(None, None)  # synth_hidden 64 < 128
  assert plan['small'] == optimizer.FactoredDims(None, None)
  assert plan['relpos'] == optimizer.FactoredDims(None, None)
  assert plan['scale'] == optimizer.FactoredDims(None, None)
  assert optimizer.factor_plan(
      {'w': boxed(jnp.zeros((4, 64, 512)), ('heads', 'synth_hidden', 'synth_key_length'))},
      min_dim_size=32)['w'] == optimizer.FactoredDims(1, 2)


def test_axis_without_a_rule_is_a_clear_error():
  with pytest.raises(ValueError, match=r"\['made_up'\] have no factor rule"):
    optimizer.factored_dims(('embed', 'made_up'), (4, 4))


def reference_factored(grads, row_dim, column_dim, decay_rate=0.8, steps=3, eps=1e-30):
  """NumPy: v ~ R C / mean(R) with decayed row/column means of g^2, update g / sqrt(v)."""
  row = column = None
  outputs = []
  for t, g in enumerate(grads, start=1):
    decay = 1.0 - t ** -decay_rate
    g2 = g.astype(np.float64) ** 2 + eps
    r_new, c_new = g2.mean(axis=column_dim, keepdims=True), g2.mean(axis=row_dim, keepdims=True)
    row = (1 - decay) * r_new if row is None else decay * row + (1 - decay) * r_new
    column = (1 - decay) * c_new if column is None else decay * column + (1 - decay) * c_new
    v = row * column / row.mean(axis=row_dim, keepdims=True)
    outputs.append(g / np.sqrt(v))
  return outputs


@pytest.mark.parametrize('shape, dims', [((6, 5), (0, 1)), ((5, 6), (1, 0)),
                                         ((3, 6, 5), (1, 2)), ((6, 3, 5), (0, 2))])
def test_factored_second_moment_matches_numpy(shape, dims):
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=shape).astype(np.float32) for _ in range(3)]
  plan = {'w': optimizer.FactoredDims(*dims)}
  transform = optimizer.scale_by_factored_rms(plan)
  state = transform.init({'w': jnp.zeros(shape)})
  want = reference_factored(grads, *dims)
  for g, expected in zip(grads, want):
    update, state = transform.update({'w': jnp.asarray(g)}, state)
    np.testing.assert_allclose(update['w'], expected, rtol=2e-5)
  # The state is factored: no full-size second moment is kept.
  assert all(np.size(x) < np.prod(shape) for x in jax.tree.leaves(state))


def test_unfactored_parameters_keep_the_full_second_moment():
  rng = np.random.default_rng(1)
  grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
  transform = optimizer.scale_by_factored_rms({'w': optimizer.FactoredDims(None, None)})
  state = transform.init({'w': jnp.zeros((4, 3))})
  v = None
  for t, g in enumerate(grads, start=1):
    decay = 1.0 - t ** -0.8
    v = (1 - decay) * g ** 2 if v is None else decay * v + (1 - decay) * (g.astype(np.float64) ** 2)
    update, state = transform.update({'w': jnp.asarray(g)}, state)
    np.testing.assert_allclose(update['w'], g / np.sqrt(v + 1e-30), rtol=2e-5)


def test_rsqrt_schedule_holds_during_warmup_then_decays():
  schedule = optimizer.rsqrt_schedule(1.0, warmup_steps=100)
  np.testing.assert_allclose([schedule(0), schedule(98), schedule(399)], [0.1, 0.1, 0.05],
                             rtol=1e-6)
  linear = optimizer.rsqrt_schedule(1.0, warmup_steps=100, linear_warmup=True)
  np.testing.assert_allclose(linear(49), 0.05, rtol=1e-6)
  np.testing.assert_allclose(optimizer.constant_schedule(1e-3)(12345), 1e-3)


def test_adafactor_update_is_clipped_and_scaled_by_parameter_rms():
  params = {'w': jnp.full((4, 4), 2.0)}
  transform = optimizer.adafactor(0.1, {'w': optimizer.FactoredDims(None, None)})
  state = transform.init(params)
  update, _ = transform.update({'w': jnp.ones((4, 4))}, state, params)
  # g/sqrt(v) = 1 everywhere (rms 1, unclipped); x lr 0.1 x param rms 2, descending.
  np.testing.assert_allclose(update['w'], -0.2, rtol=1e-5)
