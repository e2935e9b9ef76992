"""Vanilla T5 attention: T5X parameter layout, folded or logit scale, fused path."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import kernels
from synth_jax.attention import masks
from tests.attention import helpers
from tests.attention import reference


def test_parameter_paths_and_axes_equal_t5x():
  module = helpers.build('vanilla')
  x = helpers.inputs(0)
  boxed = module.init(jax.random.key(0), x, x)
  assert set(boxed) == {'params'}
  specs = nn.get_partition_spec(boxed)['params']
  for name in ('query', 'key', 'value'):
    assert specs[name]['kernel'] == jax.sharding.PartitionSpec('embed', 'joined_kv')
    assert nn.unbox(boxed)['params'][name]['kernel'].shape == (16, 16)
  assert specs['out']['kernel'] == jax.sharding.PartitionSpec('joined_kv', 'embed')


def test_query_init_folds_the_inverse_sqrt_head_dim_scale():
  module = helpers.build('vanilla', num_heads=4, head_dim=64)
  x = helpers.inputs(0, embed=256)
  params = helpers.init(module, x)['params']
  # variance_scaling(1, fan_in): std 1/sqrt(256) for key; query also divided by sqrt(64).
  np.testing.assert_allclose(float(jnp.std(params['key']['kernel'])), 1 / 16, rtol=0.05)
  np.testing.assert_allclose(float(jnp.std(params['query']['kernel'])), 1 / 16 / 8, rtol=0.05)


@pytest.mark.parametrize('name', ['vanilla', 'rotary', 'topk'])
def test_unfolded_scale_keeps_the_query_kernel_at_the_keys_scale(name):
  module = helpers.build(name, num_heads=4, head_dim=64, fold_query_scale=False)
  params = helpers.init(module, helpers.inputs(0, embed=256))['params']
  np.testing.assert_allclose(float(jnp.std(params['query']['kernel'])), 1 / 16, rtol=0.05)
  assert module.logit_scale(64) == 1 / 8


@pytest.mark.parametrize('name', ['vanilla', 'rotary', 'topk', 'random+vanilla'])
def test_unfolded_scale_is_the_folded_function_with_the_scale_moved_into_the_query_kernel(name):
  x = helpers.inputs(0)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  bias = helpers.random_bias(1, 6, 6)
  unfolded = helpers.build(name, fold_query_scale=False)
  variables = helpers.init(unfolded, x)
  folded_params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf / np.sqrt(helpers.HEAD_DIM)
      if 'query' in jax.tree_util.keystr(path) else leaf, variables['params'])
  actual = unfolded.apply(variables, x, x, mask, bias)
  expected = helpers.build(name).apply({**variables, 'params': folded_params}, x, x, mask, bias)
  np.testing.assert_allclose(actual, expected, atol=1e-5)
  # Not a no-op: the unscaled query kernel with T5's convention gives other outputs.
  assert np.abs(helpers.build(name).apply(variables, x, x, mask, bias) - actual).max() > 1e-3


def test_unfolded_scale_against_numpy_and_equal_to_the_folded_function():
  x = helpers.inputs(0)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  bias = helpers.random_bias(1, 6, 6)
  unfolded = helpers.build('vanilla', fold_query_scale=False)
  variables = helpers.init(unfolded, x)
  params = helpers.numpy_tree(variables['params'])
  logits = reference.vanilla_logits(params, np.asarray(x, np.float64), np.asarray(x, np.float64),
                                    helpers.HEADS) / np.sqrt(helpers.HEAD_DIM)
  expected = reference.output(params, reference.probabilities(logits, mask, bias),
                              np.asarray(x, np.float64), helpers.HEADS)
  actual = unfolded.apply(variables, x, x, mask, bias)
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
  # T5's parameterization is the same function once the scale moves into the query kernel.
  folded_params = {**variables['params'], 'query': {
      'kernel': variables['params']['query']['kernel'] / np.sqrt(helpers.HEAD_DIM)}}
  np.testing.assert_allclose(helpers.build('vanilla').apply({'params': folded_params}, x, x,
                                                            mask, bias), actual, atol=1e-5)


def test_mixtures_pass_the_scale_convention_to_their_members():
  x = helpers.inputs(0, embed=256)
  module = helpers.build('random+vanilla', num_heads=4, head_dim=64, fold_query_scale=False)
  params = helpers.init(module, x)['params']
  np.testing.assert_allclose(float(jnp.std(params['vanilla']['query']['kernel'])), 1 / 16,
                             rtol=0.05)


@pytest.mark.parametrize('fold', [True, False])
@pytest.mark.parametrize('decode', [False, True])
def test_fused_jax_attention_path_equals_the_core(decode, fold):
  x = helpers.inputs(0)
  mask = masks.make_causal_mask(jnp.ones(x.shape[:2]))
  bias = helpers.random_bias(1, 6, 6)
  core_module = helpers.build('vanilla', fold_query_scale=fold)
  fused_module = helpers.build('vanilla', dispatch=kernels.dispatch_for('xla'),
                               fold_query_scale=fold)
  variables = helpers.init(core_module, x)
  if not decode:
    np.testing.assert_allclose(fused_module.apply(variables, x, x, mask, bias),
                               core_module.apply(variables, x, x, mask, bias), atol=1e-5)
    return
  outputs = []
  for module in (core_module, fused_module):
    _, state = module.apply(variables, x, x, decode=True, mutable=['cache'])
    steps = []
    for i in range(3):
      out, state = module.apply({**variables, **state}, x[:, i:i + 1], x[:, i:i + 1], None, bias,
                                decode=True, mutable=['cache'])
      steps.append(out)
    outputs.append(jnp.concatenate(steps, axis=1))
  np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)


def test_lengths_are_unbounded():
  module = helpers.build('vanilla', max_query_length=2, max_key_length=2)
  x = helpers.inputs(0, length=9)
  assert module.apply(helpers.init(module, x), x, x).shape == (2, 9, helpers.EMBED)
