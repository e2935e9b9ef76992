"""Flash attention equals the core: masks as lengths or dense, values, gradients, empty examples.

It runs here through JAX's 'xla' implementation of the same call; the cuDNN kernel itself is
checked by `test_cudnn_flash_attention_equals_the_core`, which runs on NVIDIA GPUs only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import core
from synth_jax.attention import masks
from synth_jax.attention.kernels import flash

BATCH, HEADS, HEAD_DIM = 3, 2, 8

# (query lengths, key lengths, q_len, k_len, causal): encoder, decoder, cross-attention.
CASES = {
    'encoder': ([7, 4, 1], [7, 4, 1], 7, 7, False),
    'decoder': ([5, 3, 5], [5, 3, 5], 5, 5, True),
    'cross': ([5, 2, 4], [7, 6, 1], 5, 7, False),
}


def padded_tokens(lengths, total, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 100, (len(lengths), total))
  return jnp.asarray(np.where(np.arange(total)[None] < np.asarray(lengths)[:, None], tokens, 0))


def case_mask(case, scale=1):
  """The network's `Mask` of a case, every length times `scale`."""
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  q_lengths, k_lengths = [scale * n for n in q_lengths], [scale * n for n in k_lengths]
  if case == 'cross':
    return masks.Mask.for_cross_attention(padded_tokens(q_lengths, scale * q_len) > 0,
                                          padded_tokens(k_lengths, scale * k_len, seed=1))
  return masks.Mask.for_self_attention(padded_tokens(q_lengths, scale * q_len), causal=causal)


def tensors(seed, q_len, k_len, batch=BATCH):
  keys = jax.random.split(jax.random.key(seed), 4)
  query = jax.random.normal(keys[0], (batch, q_len, HEADS, HEAD_DIM))
  key = jax.random.normal(keys[1], (batch, k_len, HEADS, HEAD_DIM))
  value = jax.random.normal(keys[2], (batch, k_len, HEADS, HEAD_DIM))
  bias = jax.random.normal(keys[3], (1, HEADS, q_len, k_len))
  return query, key, value, bias


def core_attention(query, key, value, bias, mask, scale):
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) * scale
  return core.mix(core.normalize(logits, mask.dense(), bias), value)


@pytest.mark.parametrize('case', sorted(CASES))
def test_lengths_stand_for_the_dense_mask(case):
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  mask = case_mask(case)
  query_lengths, key_lengths = mask.lengths()
  np.testing.assert_array_equal(query_lengths, q_lengths)
  np.testing.assert_array_equal(key_lengths, k_lengths)
  from_lengths = ((np.arange(q_len)[None, :, None] < np.asarray(q_lengths)[:, None, None])
                  & (np.arange(k_len)[None, None, :] < np.asarray(k_lengths)[:, None, None]))
  if causal:
    from_lengths &= np.tril(np.ones((q_len, k_len), bool))[None]
  np.testing.assert_array_equal(mask.dense(), from_lengths[:, None])
  # ... and both are the mask the pairwise helpers give.
  query_tokens = padded_tokens(q_lengths, q_len)
  key_tokens = query_tokens if case != 'cross' else padded_tokens(k_lengths, k_len, seed=1)
  helpers_mask = masks.combine_masks(masks.make_attention_mask(query_tokens > 0, key_tokens > 0),
                                     masks.make_causal_mask(query_tokens) if causal else None)
  np.testing.assert_array_equal(mask.dense(), helpers_mask > 0)


def assert_equals_the_core(mask, query, key, value, bias, scale):
  """Outputs at valid queries and the gradients of a loss over them, for every input."""
  valid = np.asarray(mask.query_valid)
  run = lambda q, k, v, b: flash.flash_attention(q, k, v, b, mask, scale, 'xla')
  reference = lambda q, k, v, b: core_attention(q, k, v, b, mask, scale)
  out = run(query, key, value, bias)
  np.testing.assert_allclose(out[valid], reference(query, key, value, bias)[valid],
                             rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(9), out.shape) * valid[:, :, None, None]
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=argnums))(
      query, key, value, bias) for f in (run, reference)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  return out


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('with_bias', [True, False])
def test_flash_attention_with_lengths_equals_the_core(case, with_bias):
  mask = case_mask(case)
  assert mask.lengths() is not None
  query, key, value, bias = tensors(0, *CASES[case][2:4])
  out = assert_equals_the_core(mask, query, key, value, bias if with_bias else None, scale=0.7)
  valid = np.asarray(mask.query_valid)
  np.testing.assert_array_equal(out[~valid], 0.0)  # padding queries give exact zeros


@pytest.mark.parametrize('causal', [False, True])
def test_flash_attention_with_a_dense_packing_mask_equals_the_core(causal):
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1], [1, 2, 3, 3, 0, 0]])
  mask = masks.Mask.for_self_attention(segments, segments, causal=causal)
  assert mask.lengths() is None
  query, key, value, bias = tensors(1, 6, 6)
  assert_equals_the_core(mask, query, key, value, bias, scale=1.0)


def test_flash_attention_gives_zeros_and_finite_gradients_for_empty_examples():
  mask = masks.Mask.for_cross_attention(padded_tokens([4, 0], 4) > 0, padded_tokens([3, 0], 4))
  query, key, value, bias = tensors(15, 4, 4, batch=2)
  run = lambda q, k, v: flash.flash_attention(q, k, v, bias, mask, 1.0, 'xla')
  out = run(query, key, value)
  np.testing.assert_array_equal(out[1], 0.0)
  grads = jax.grad(lambda *a: jnp.sum(run(*a) ** 2), argnums=(0, 1, 2))(query, key, value)
  for grad in grads:
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[1], 0.0)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN runs on NVIDIA GPUs only')
@pytest.mark.parametrize('case', sorted(CASES))
def test_cudnn_flash_attention_equals_the_core(case):  # pragma: no cover (GPU)
  """bf16 at T5 head size: cuDNN's kernel against the float32 core, forward and gradients."""
  q_len, k_len = 8 * CASES[case][2], 8 * CASES[case][3]  # cuDNN wants even lengths with a bias
  mask = case_mask(case, scale=8)
  keys = jax.random.split(jax.random.key(0), 4)
  shape = lambda n: (BATCH, n, 4, 64)
  query = 0.3 * jax.random.normal(keys[0], shape(q_len))
  key = 0.3 * jax.random.normal(keys[1], shape(k_len))
  value = jax.random.normal(keys[2], shape(k_len))
  bias = jax.random.normal(keys[3], (1, 4, q_len, k_len))
  valid = np.asarray(mask.query_valid)
  cotangent = jax.random.normal(jax.random.key(5), shape(q_len)) * valid[:, :, None, None]

  def cudnn(query, key, value, bias):
    bf16 = lambda x: x.astype(jnp.bfloat16)
    return flash.flash_attention(bf16(query), bf16(key), bf16(value), bias, mask, 1.0,
                                 'cudnn').astype(jnp.float32)

  def reference(query, key, value, bias):
    return core_attention(query, key, value, bias, mask, 1.0)

  relative = lambda got, want: float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  out = jax.jit(cudnn)(query, key, value, bias)
  assert relative(out[valid], reference(query, key, value, bias)[valid]) < 1e-2
  grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2, 3)))(
      query, key, value, bias) for f in (cudnn, reference)]
  for got, want in zip(*grads):
    assert relative(got, want) < 2e-2
