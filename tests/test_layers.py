"""T5 layers against plain NumPy references."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import layers
from tests.attention import helpers

round_bf16 = helpers.round_bf16


def _rng(seed=0):
  return np.random.default_rng(seed)


def _params(variables):
  return nn.unbox(variables)['params']


def test_layer_norm_is_rms_norm_without_centering_or_bias():
  x = _rng().normal(size=(2, 3, 8)).astype(np.float32) * 3 + 1  # nonzero mean: must stay
  module = layers.LayerNorm()
  variables = module.init(jax.random.key(0), x)
  scale = _rng(1).normal(size=(8,)).astype(np.float32)
  out = module.apply({'params': {'scale': scale}}, x)
  expected = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert set(_params(variables)) == {'scale'}
  np.testing.assert_array_equal(_params(variables)['scale'], np.ones(8))
  assert nn.get_partition_spec(variables)['params']['scale'] == jax.sharding.PartitionSpec('embed')


def test_layer_norm_computes_in_float32_and_returns_dtype():
  x = jnp.asarray(_rng().normal(size=(1, 2, 8)), jnp.bfloat16)
  module = layers.LayerNorm(dtype=jnp.bfloat16)
  out = module.apply(module.init(jax.random.key(0), x), x)
  assert out.dtype == jnp.bfloat16


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_mlp_block_is_gated_gelu():
  x = _rng().normal(size=(2, 5, 8)).astype(np.float32)
  module = layers.MlpBlock(intermediate_dim=16, activations=('gelu', 'linear'),
                           intermediate_dropout_rate=0.5)
  variables = module.init(jax.random.key(0), x)
  p = _params(variables)
  assert set(p) == {'wi_0', 'wi_1', 'wo'}
  assert p['wi_0']['kernel'].shape == (8, 16) and p['wo']['kernel'].shape == (16, 8)
  specs = nn.get_partition_spec(variables)['params']
  assert specs['wi_0']['kernel'] == jax.sharding.PartitionSpec('embed', 'mlp')
  assert specs['wi_1']['kernel'] == jax.sharding.PartitionSpec('embed', 'mlp')
  assert specs['wo']['kernel'] == jax.sharding.PartitionSpec('mlp', 'embed')

  out = module.apply(variables, x, deterministic=True)  # dropout off
  w0, w1, wo = (np.asarray(p[k]['kernel']) for k in ('wi_0', 'wi_1', 'wo'))
  expected = (_gelu_tanh(x @ w0) * (x @ w1)) @ wo
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_mlp_block_dropout_is_active_only_when_not_deterministic():
  x = _rng().normal(size=(2, 5, 8)).astype(np.float32)
  module = layers.MlpBlock(intermediate_dim=16, intermediate_dropout_rate=0.5)
  variables = module.init(jax.random.key(0), x)
  a = module.apply(variables, x, deterministic=False, rngs={'dropout': jax.random.key(1)})
  b = module.apply(variables, x, deterministic=True)
  assert not np.allclose(a, b)


def test_mlp_single_activation_uses_t5_v1_name_wi():
  x = np.ones((1, 2, 4), np.float32)
  variables = layers.MlpBlock(intermediate_dim=8, activations=('relu',)).init(
      jax.random.key(0), x)
  assert set(_params(variables)) == {'wi', 'wo'}


def test_mlp_unknown_activation_names_the_knob():
  with pytest.raises(ValueError, match='mlp_activations'):
    layers.MlpBlock(intermediate_dim=8, activations=('nope',)).init(
        jax.random.key(0), np.ones((1, 2, 4), np.float32))


# Hand-checked T5 buckets (32 buckets, max distance 128). Keys are key_pos - query_pos.
# Bidirectional: 16 buckets per direction, exact below 8, then 8 + floor(8 log(n/8) / log 16)
# (n = 12 -> 9, 16 -> 10, 31 -> 11, 63 -> 13, 64 -> 14, 100 -> 15), capped at 15; keys after
# the query add 16.
BIDIRECTIONAL = {
    0: 0, -1: 1, -7: 7, -8: 8, -9: 8, -12: 9, -15: 9, -16: 10, -31: 11, -32: 12, -63: 13,
    -64: 14, -100: 15, -127: 15, -128: 15, -1000: 15,
    1: 17, 3: 19, 7: 23, 8: 24, 16: 26, 127: 31, 128: 31, 1000: 31,
}
# Unidirectional: exact below 16, then 16 + floor(16 log(n/16) / log 8) (n = 32 -> 21,
# 63 -> 26, 100 -> 30, 127 -> 31), capped at 31; keys after the query all go to bucket 0.
UNIDIRECTIONAL = {
    0: 0, -1: 1, -15: 15, -16: 16, -31: 21, -32: 21, -63: 26, -64: 26, -100: 30, -127: 31,
    -128: 31, -1000: 31,
    1: 0, 5: 0, 200: 0,
}


@pytest.mark.parametrize('bidirectional,table', [(True, BIDIRECTIONAL), (False, UNIDIRECTIONAL)])
def test_relative_position_bucket_matches_hand_checked_table(bidirectional, table):
  relative = np.array(list(table), np.int32)
  buckets = layers.relative_position_bucket(relative, bidirectional=bidirectional)
  assert dict(zip(relative.tolist(), buckets.tolist())) == table


def test_relative_position_bucket_max_distance_moves_the_cap():
  # With max_distance 16 the log buckets 8..15 cover distances 8..15 only (8 + floor(8 log2(n/8))
  # equals n there); 16 and beyond share bucket 15, where max_distance 128 still separates them.
  relative = -np.array([7, 8, 12, 15, 16, 64, 500])
  buckets = layers.relative_position_bucket(relative, bidirectional=True, num_buckets=32,
                                            max_distance=16)
  np.testing.assert_array_equal(buckets, [7, 8, 12, 15, 15, 15, 15])


def test_relative_position_biases_gather_rel_embedding_per_head():
  module = layers.RelativePositionBiases(num_heads=3)
  variables = module.init(jax.random.key(0), 5, 7, True)
  table = np.asarray(_params(variables)['rel_embedding'])
  assert table.shape == (3, 32)
  assert (nn.get_partition_spec(variables)['params']['rel_embedding']
          == jax.sharding.PartitionSpec('heads', 'relpos_buckets'))
  for bidirectional in (True, False):
    bias = module.apply(variables, 5, 7, bidirectional)
    assert bias.shape == (1, 3, 5, 7)
    for i in range(5):
      for j in range(7):
        bucket = layers.relative_position_bucket(np.array(j - i), bidirectional)
        np.testing.assert_array_equal(bias[0, :, i, j], table[:, bucket])


def test_embed_looks_up_rows_and_attend_is_tied_logits():
  module = layers.Embed(num_embeddings=10, features=4, attend_dtype=jnp.float32)
  tokens = jnp.array([[1, 0, 9], [3, 3, 2]])
  variables = module.init(jax.random.key(0), tokens)
  table = np.asarray(_params(variables)['embedding'])
  assert table.shape == (10, 4)
  assert (nn.get_partition_spec(variables)['params']['embedding']
          == jax.sharding.PartitionSpec('vocab', 'embed'))
  np.testing.assert_array_equal(module.apply(variables, tokens), table[np.asarray(tokens)])

  query = _rng().normal(size=(2, 3, 4)).astype(np.float32)
  logits = module.apply(variables, query, method=layers.Embed.attend)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, query @ table.T, rtol=1e-5, atol=1e-6)


def test_dense_output_dtype_keeps_bf16_operands_and_a_float32_result():
  x = _rng().normal(size=(2, 3, 8)).astype(np.float32)
  module = layers.DenseGeneral(5, kernel_axes=('embed', 'vocab'), dtype=jnp.bfloat16,
                               output_dtype=jnp.float32)
  variables = module.init(jax.random.key(0), x)
  kernel = np.asarray(_params(variables)['kernel'])
  out = module.apply(variables, x)
  assert out.dtype == jnp.float32 and out.shape == (2, 3, 5)
  # Rounded operands, float32 sums: no bfloat16 rounding of the result.
  np.testing.assert_allclose(out, round_bf16(x) @ round_bf16(kernel), rtol=1e-6, atol=1e-6)
  rounded = layers.DenseGeneral(5, kernel_axes=('embed', 'vocab'), dtype=jnp.bfloat16)
  assert rounded.apply(variables, x).dtype == jnp.bfloat16


def test_wide_output_gradients_are_bf16_matmuls_of_the_rounded_cotangent():
  rng = _rng()
  x = jnp.asarray(rng.normal(size=(6, 8)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(8, 5)), jnp.bfloat16)
  weights = rng.normal(size=(6, 5)).astype(np.float32)  # d loss / d out, float32
  contract = (((1,), (0,)), ((), ()))
  loss = lambda a, b: jnp.sum(layers.wide_output_dot_general(a, b, contract, jnp.float32)
                              * weights)
  grad_x, grad_kernel = jax.grad(loss, argnums=(0, 1))(x, kernel)
  assert grad_x.dtype == grad_kernel.dtype == jnp.bfloat16
  f32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_allclose(f32(grad_x), round_bf16(round_bf16(weights) @ f32(kernel).T),
                             rtol=1e-2)
  np.testing.assert_allclose(f32(grad_kernel), round_bf16(f32(x).T @ round_bf16(weights)),
                             rtol=1e-2)
  # Every matmul of the gradient takes bfloat16 operands (none runs in float32).
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  dots = [e for e in helpers.all_equations(jaxpr) if e.primitive.name == 'dot_general']
  assert len(dots) >= 3
  assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars), dots


def test_dense_output_dtype_narrower_than_the_operands_or_mixed_operands_are_refused():
  x = jnp.ones((2, 8), jnp.float32)
  narrow = layers.DenseGeneral(5, kernel_axes=('embed', 'vocab'), dtype=jnp.float32,
                               output_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match='must be the operands.*or wider'):
    narrow.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='must share a dtype'):
    layers._dot_general(x, jnp.ones((8, 5), jnp.bfloat16), (((1,), (0,)), ((), ())),
                        jnp.float32)


def test_embed_attend_output_dtype_keeps_bf16_operands_and_a_float32_result():
  module = layers.Embed(num_embeddings=10, features=4, attend_dtype=jnp.bfloat16,
                        attend_output_dtype=jnp.float32)
  variables = module.init(jax.random.key(0), jnp.array([[1, 2]]))
  table = np.asarray(_params(variables)['embedding'])
  query = _rng().normal(size=(2, 3, 4)).astype(np.float32)
  logits = module.apply(variables, query, method=layers.Embed.attend)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, round_bf16(query) @ round_bf16(table).T, rtol=1e-6, atol=1e-6)


def test_embed_rejects_float_ids():
  module = layers.Embed(num_embeddings=10, features=4)
  with pytest.raises(ValueError, match='integer'):
    module.init(jax.random.key(0), jnp.ones((1, 2)))
