"""Properties of the shared core, proven for every variant (and mixtures)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from synth_jax import partitioning
from synth_jax.attention import core
from synth_jax.attention import masks
from tests.attention import helpers
from tests.attention.helpers import ALL_TYPES


def test_normalize_gives_masked_keys_exactly_zero_probability():
  logits = jnp.array([[[[3.0, 1.0, 50.0]]]])
  probs = core.normalize(logits, jnp.array([[[[True, True, False]]]]), None)
  assert probs[0, 0, 0, 2] == 0.0
  np.testing.assert_allclose(probs[0, 0, 0, :2], jax.nn.softmax(jnp.array([3.0, 1.0])), rtol=1e-6)


def apply(module, variables, x_q, x_kv=None, **kwargs):
  return module.apply(variables, x_q, x_q if x_kv is None else x_kv, **kwargs)


@pytest.mark.parametrize('name', ALL_TYPES)
def test_perturbing_padded_tokens_changes_no_unpadded_output(name):
  module = helpers.build(name)
  x = helpers.inputs(0)
  valid = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]], bool)
  mask = masks.make_attention_mask(valid, valid)
  variables = helpers.init(module, x)
  noise = 10.0 * helpers.inputs(1) * (~valid)[:, :, None]
  bias = helpers.random_bias(2, 6, 6)
  before = apply(module, variables, x, mask=mask, bias=bias)
  after = apply(module, variables, x + noise, mask=mask, bias=bias)
  np.testing.assert_allclose(np.asarray(after)[np.asarray(valid)],
                             np.asarray(before)[np.asarray(valid)], atol=1e-5)
  # The perturbation is real: padded positions' own outputs move.
  assert not np.allclose(np.asarray(after)[~np.asarray(valid)],
                         np.asarray(before)[~np.asarray(valid)], atol=1e-3)


@pytest.mark.parametrize('name', ALL_TYPES)
def test_causal_mask_hides_future_tokens(name):
  module = helpers.build(name)
  x = helpers.inputs(0)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  variables = helpers.init(module, x)
  before = np.asarray(apply(module, variables, x, mask=mask))
  t = 3
  after = np.asarray(apply(module, variables, x.at[:, t:].add(5.0), mask=mask))
  np.testing.assert_allclose(after[:, :t], before[:, :t], atol=1e-5)
  assert not np.allclose(after[:, t], before[:, t], atol=1e-3)


@pytest.mark.parametrize('name', ALL_TYPES)
def test_packed_segments_equal_each_example_alone(name):
  module = helpers.build(name)
  x = helpers.inputs(0, batch=1, length=7)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2]])
  mask = masks.Mask.for_self_attention(jnp.ones_like(segments), segments)
  np.testing.assert_array_equal(mask.query_positions, [[0, 1, 2, 0, 1, 2, 3]])
  variables = helpers.init(module, x)
  packed = np.asarray(apply(module, variables, x, mask=mask))
  first = np.asarray(apply(module, variables, x[:, :3]))
  second = np.asarray(apply(module, variables, x[:, 3:]))
  np.testing.assert_allclose(packed[:, :3], first, atol=1e-5)
  np.testing.assert_allclose(packed[:, 3:], second, atol=1e-5)


@pytest.mark.parametrize('name', ALL_TYPES)
def test_decode_cache_matches_full_causal_forward(name):
  module = helpers.build(name)
  length = 6
  x = helpers.inputs(0, length=length)
  bias = helpers.random_bias(3, length, length)
  variables = helpers.init(module, x)
  full = module.apply(variables, x, x, masks.make_causal_mask(jnp.ones(x.shape[:2])), bias)
  _, state = module.apply(variables, jnp.zeros_like(x), jnp.zeros_like(x), decode=True,
                          mutable=['cache'])
  cache = state['cache']
  for i in range(length):
    token = x[:, i:i + 1]
    step_out, state = module.apply({**variables, 'cache': cache}, token, token, None, bias,
                                   decode=True, mutable=['cache'])
    cache = state['cache']
    np.testing.assert_allclose(step_out[:, 0], full[:, i], atol=1e-5, err_msg=f'position {i}')


def test_decode_step_rejects_more_than_one_position():
  module = helpers.build('vanilla')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  _, state = module.apply(variables, x, x, decode=True, mutable=['cache'])
  with pytest.raises(ValueError, match=r'one position at a time'):
    module.apply({**variables, **state}, x, x, decode=True, mutable=['cache'])


@pytest.mark.parametrize('name', ALL_TYPES)
def test_gradients_are_finite_and_reach_every_trainable_parameter(name):
  module = helpers.build(name)
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  bias = helpers.random_bias(1, 6, 6)

  def loss(params):
    out = module.apply({**variables, 'params': params}, x, x, mask, bias)
    return jnp.sum(out ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), path
    assert np.any(np.abs(g) > 0), f'no gradient reaches {jax.tree_util.keystr(path)}'


@pytest.mark.parametrize('name', ALL_TYPES)
def test_bfloat16_activations_stay_close_to_float32(name):
  x = helpers.inputs(0)
  variables = helpers.init(helpers.build(name), x)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  f32 = helpers.build(name).apply(variables, x, x, mask)
  bf16 = helpers.build(name, dtype=jnp.bfloat16).apply(variables, x, x, mask)
  assert bf16.dtype == jnp.bfloat16
  scale = float(jnp.max(jnp.abs(f32)))
  np.testing.assert_allclose(np.asarray(bf16, np.float32), f32, atol=0.03 * scale)


@pytest.mark.parametrize('name', ALL_TYPES)
def test_sharded_forward_on_2x2_mesh_equals_unsharded(name):
  mesh = partitioning.create_mesh(model_parallelism=2)
  assert mesh.shape == {'data': 2, 'model': 2}
  module = helpers.build(name, num_heads=4)
  x = helpers.inputs(0, batch=4)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  boxed = module.init(jax.random.key(0), x, x)
  variables = nn.unbox(boxed)
  expected = module.apply(variables, x, x, mask)

  shardings = nn.unbox(partitioning.logical_shardings(boxed, mesh))
  sharded_vars = jax.device_put(variables, shardings)
  batch = partitioning.data_sharding(mesh)
  x_sharded = jax.device_put(x, batch)
  mask_sharded = jax.device_put(mask, batch)
  run = jax.jit(lambda v, a, m: module.apply(v, a, a, m),
                out_shardings=NamedSharding(mesh, PartitionSpec('data')))
  got = run(sharded_vars, x_sharded, mask_sharded)
  assert len(got.sharding.device_set) == 4
  # Parameters with a 'heads'/'joined_kv' axis really are split over 'model'.
  value_kernel = sharded_vars['params']['value']['kernel']
  assert value_kernel.sharding.spec == PartitionSpec(None, 'model')
  np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize('name', ['dense', 'random', 'fixed_random', 'factorized_dense',
                                  'factorized_random', 'random+vanilla'])
def test_length_beyond_max_raises_naming_the_gin_knob(name):
  module = helpers.build(name)
  too_long = helpers.inputs(0, length=helpers.MAX_LEN + 1)
  with pytest.raises(ValueError, match=r'exceeds.*max_(query|key)_length.*T5Config\.max_'):
    module.init(jax.random.key(0), too_long, too_long)


@pytest.mark.parametrize('name', ['vanilla', 'dense', 'random', 'orthogonal'])
def test_head_dim_that_does_not_divide_embed_raises(name):
  module = helpers.build(name, num_heads=3, head_dim=None)
  x = helpers.inputs(0)  # embed 16 is not divisible by 3 heads
  with pytest.raises(ValueError, match=r'not divisible by num_heads=3.*head_dim'):
    module.init(jax.random.key(0), x, x)


def test_head_dim_defaults_to_embed_over_heads():
  module = helpers.build('vanilla', num_heads=4, head_dim=None)
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  assert variables['params']['query']['kernel'].shape == (16, 16)  # 4 heads x 4
