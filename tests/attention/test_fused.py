"""The fused paths equal the shared core: masks as lengths, flash attention, shared-score softmax.

Flash attention runs here through JAX's 'xla' implementation of the same call; the cuDNN kernel
itself is checked by `test_cudnn_flash_attention_equals_the_core`, which runs on NVIDIA GPUs only.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import core
from synth_jax.attention import fused
from synth_jax.attention import registry
from tests.attention import helpers

BATCH, HEADS, HEAD_DIM = 3, 2, 8


def padded_tokens(lengths, total, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 100, (len(lengths), total))
  return jnp.asarray(np.where(np.arange(total)[None] < np.asarray(lengths)[:, None], tokens, 0))


def dense_mask(query_tokens, key_tokens, causal):
  mask = core.make_attention_mask(query_tokens > 0, key_tokens > 0)
  if causal:
    mask = core.combine_masks(mask, core.make_causal_mask(query_tokens))
  return mask


def core_attention(logits, mask, bias, value):
  return core.mix(core.normalize(logits, mask, bias), value)


def tensors(seed, q_len, k_len, batch=BATCH):
  keys = jax.random.split(jax.random.key(seed), 4)
  query = jax.random.normal(keys[0], (batch, q_len, HEADS, HEAD_DIM))
  key = jax.random.normal(keys[1], (batch, k_len, HEADS, HEAD_DIM))
  value = jax.random.normal(keys[2], (batch, k_len, HEADS, HEAD_DIM))
  bias = jax.random.normal(keys[3], (1, HEADS, q_len, k_len))
  return query, key, value, bias


# (query lengths, key lengths, q_len, k_len, causal): encoder, decoder, cross-attention.
CASES = {
    'encoder': ([7, 4, 1], [7, 4, 1], 7, 7, False),
    'decoder': ([5, 3, 5], [5, 3, 5], 5, 5, True),
    'cross': ([5, 2, 4], [7, 6, 1], 5, 7, False),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_lengths_stand_for_the_networks_dense_mask(case):
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  query_tokens, key_tokens = padded_tokens(q_lengths, q_len), padded_tokens(k_lengths, k_len, 1)
  lengths = fused.SequenceLengths.from_tokens(query_tokens, key_tokens, causal)
  np.testing.assert_array_equal(lengths.query, q_lengths)
  np.testing.assert_array_equal(lengths.key, k_lengths)
  np.testing.assert_array_equal(lengths.mask(q_len, k_len),
                                dense_mask(query_tokens, key_tokens, causal) > 0)


def valid_rows(lengths, q_len):
  return np.arange(q_len)[None, :] < np.asarray(lengths.query)[:, None]


@pytest.mark.parametrize('case', sorted(CASES))
@pytest.mark.parametrize('with_bias', [True, False])
def test_flash_attention_with_lengths_equals_the_core(case, with_bias):
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  lengths = fused.SequenceLengths(jnp.array(q_lengths), jnp.array(k_lengths), causal)
  query, key, value, bias = tensors(0, q_len, k_len)
  bias = bias if with_bias else None
  mask = lengths.mask(q_len, k_len)
  scale = 0.7

  def flash(query, key, value, bias):
    return fused.flash_attention(query, key, value, bias, None, lengths, scale, 'xla')

  def reference(query, key, value, bias):
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) * scale
    return core_attention(logits, mask, bias, value)

  valid = valid_rows(lengths, q_len)
  out = flash(query, key, value, bias)
  np.testing.assert_allclose(out[valid], reference(query, key, value, bias)[valid],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out[~valid], 0.0)  # padding queries give exact zeros

  # Gradients of a loss over the valid rows, for every input (the bias's is batch-free).
  cotangent = jax.random.normal(jax.random.key(9), out.shape) * valid[:, :, None, None]
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2, 3)
                    if with_bias else (0, 1, 2))(query, key, value, bias)
           for f in (flash, reference)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_flash_attention_gives_zeros_and_finite_gradients_for_empty_examples():
  lengths = fused.SequenceLengths(jnp.array([4, 0]), jnp.array([3, 0]))
  query, key, value, bias = tensors(15, 4, 4, batch=2)
  run = lambda q, k, v: fused.flash_attention(q, k, v, bias, None, lengths, 1.0, 'xla')
  out = run(query, key, value)
  np.testing.assert_array_equal(out[1], 0.0)
  grads = jax.grad(lambda *a: jnp.sum(run(*a) ** 2), argnums=(0, 1, 2))(query, key, value)
  for grad in grads:
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[1], 0.0)


def test_flash_attention_with_a_dense_packing_mask_equals_the_core():
  segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1], [1, 2, 3, 3, 0, 0]])
  mask = core.combine_masks(core.make_attention_mask(segments, segments, jnp.equal),
                            core.make_attention_mask(segments > 0, segments > 0))
  query, key, value, bias = tensors(1, 6, 6)
  out = fused.flash_attention(query, key, value, bias, mask, None, 1.0, 'xla')
  want = core_attention(jnp.einsum('bqhd,bkhd->bhqk', query, key), mask, bias, value)
  valid = np.asarray(segments > 0)
  np.testing.assert_allclose(out[valid], want[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', ['encoder', 'decoder'])
def test_shared_scores_attention_equals_a_per_example_softmax(case):
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  lengths = fused.SequenceLengths(jnp.array(q_lengths), jnp.array(k_lengths), causal)
  _, _, value, bias = tensors(2, q_len, k_len)
  logits = 2.0 * jax.random.normal(jax.random.key(3), (1, HEADS, q_len, k_len))
  mask = lengths.mask(q_len, k_len)

  def shared(logits, bias, value):
    return fused.shared_scores_attention(logits, bias, lengths, value)

  def reference(logits, bias, value):
    return core_attention(logits, mask, bias, value)

  valid = valid_rows(lengths, q_len)
  np.testing.assert_allclose(shared(logits, bias, value)[valid],
                             reference(logits, bias, value)[valid], rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(4), value.shape[:1] + (q_len,) + value.shape[2:])
  cotangent = cotangent * valid[:, :, None, None]
  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2))(
      logits, bias, value) for f in (shared, reference)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_shared_scores_attention_ignores_padding_values_and_survives_empty_examples():
  lengths = fused.SequenceLengths(jnp.array([4, 0]), jnp.array([2, 0]))
  _, _, value, _ = tensors(5, 4, 4, batch=2)
  logits = jax.random.normal(jax.random.key(6), (1, HEADS, 4, 4))
  out = fused.shared_scores_attention(logits, None, lengths, value)
  garbage = value.at[:, 2:].set(1e6)  # padding keys of example 0, everything of example 1
  np.testing.assert_array_equal(fused.shared_scores_attention(logits, None, lengths, garbage), out)
  np.testing.assert_array_equal(out[1], 0.0)  # no keys: zeros, not NaN


def test_shared_scores_attention_normalizes_once_for_the_whole_batch():
  """Its cost does not grow a `[batch, heads, q, k]` tensor: no value in the program has one."""
  lengths = fused.SequenceLengths(jnp.array([6, 3, 5]), jnp.array([6, 3, 5]))
  _, _, value, _ = tensors(7, 6, 6)
  logits = jax.random.normal(jax.random.key(8), (1, HEADS, 6, 6))
  loss = lambda logits, value: jnp.sum(
      fused.shared_scores_attention(logits, None, lengths, value) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(logits, value)
  shapes = helpers.traced_shapes(jaxpr)
  assert (BATCH, HEADS, 6, 6) not in shapes and (HEADS, BATCH, 6, 6) not in shapes
  assert (HEADS, 6, 6) in shapes


@pytest.mark.parametrize('attention_type', ['vanilla', 'orthogonal'])
@pytest.mark.parametrize('case', sorted(CASES))
def test_fused_query_key_modules_equal_their_core_path(attention_type, case):
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  lengths = fused.SequenceLengths(jnp.array(q_lengths), jnp.array(k_lengths), causal)
  x_q, x_kv = helpers.inputs(0, BATCH, q_len), helpers.inputs(1, BATCH, k_len)
  bias = None if case == 'cross' else helpers.random_bias(2, q_len, k_len)
  mask = lengths.mask(q_len, k_len)
  plain = helpers.build(attention_type)
  variables = helpers.init(plain, x_q, x_kv)
  want = plain.apply(variables, x_q, x_kv, mask, bias)
  for fused_module_lengths in (lengths, None):  # lengths, or the dense mask alone
    got = helpers.build(attention_type, fused='xla').apply(variables, x_q, x_kv, mask, bias,
                                                          lengths=fused_module_lengths)
    valid = valid_rows(lengths, q_len)
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('attention_type', ['random', 'fixed_random', 'factorized_random'])
def test_random_synthesizers_with_lengths_equal_their_dense_mask_path(attention_type):
  q_lengths, k_lengths, q_len, k_len, causal = CASES['decoder']
  lengths = fused.SequenceLengths(jnp.array(q_lengths), jnp.array(k_lengths), causal)
  x = helpers.inputs(3, BATCH, q_len)
  bias = helpers.random_bias(4, q_len, k_len)
  module = helpers.build(attention_type)
  variables = helpers.init(module, x)
  mask = lengths.mask(q_len, k_len)
  want = module.apply(variables, x, x, mask, bias)
  got = module.apply(variables, x, x, mask, bias, lengths=lengths)
  valid = valid_rows(lengths, q_len)
  np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN runs on NVIDIA GPUs only')
@pytest.mark.parametrize('case', sorted(CASES))
def test_cudnn_flash_attention_equals_the_core(case):  # pragma: no cover (GPU)
  """bf16 at T5 head size: cuDNN's kernel against the float32 core, forward and gradients."""
  q_lengths, k_lengths, q_len, k_len, causal = CASES[case]
  q_len, k_len = 8 * q_len, 8 * k_len  # cuDNN wants even lengths with a bias
  lengths = fused.SequenceLengths(8 * jnp.array(q_lengths), 8 * jnp.array(k_lengths), causal)
  keys = jax.random.split(jax.random.key(0), 4)
  shape = lambda n: (BATCH, n, 4, 64)
  query = 0.3 * jax.random.normal(keys[0], shape(q_len))
  key = 0.3 * jax.random.normal(keys[1], shape(k_len))
  value = jax.random.normal(keys[2], shape(k_len))
  bias = jax.random.normal(keys[3], (1, 4, q_len, k_len))
  mask = lengths.mask(q_len, k_len)
  valid = valid_rows(lengths, q_len)
  cotangent = jax.random.normal(jax.random.key(5), shape(q_len)) * valid[:, :, None, None]

  def cudnn(query, key, value, bias):
    bf16 = lambda x: x.astype(jnp.bfloat16)
    return fused.flash_attention(bf16(query), bf16(key), bf16(value), bias, None, lengths, 1.0,
                                 'cudnn').astype(jnp.float32)

  def reference(query, key, value, bias):
    return core_attention(jnp.einsum('bqhd,bkhd->bhqk', query, key), mask, bias, value)

  relative = lambda got, want: float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
  out = jax.jit(cudnn)(query, key, value, bias)
  assert relative(out[valid], reference(query, key, value, bias)[valid]) < 1e-2
  grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2, 3)))(
      query, key, value, bias) for f in (cudnn, reference)]
  for got, want in zip(*grads):
    assert relative(got, want) < 2e-2


@pytest.mark.parametrize('causal', [False, True])
def test_shared_scores_gradient_is_exactly_zero_where_no_output_depends_on_the_score(causal):
  """Keys padded everywhere and the one-key first causal row: 0, not rounding noise."""
  lengths = fused.SequenceLengths(jnp.array([5, 3]), jnp.array([5, 3]), causal)
  _, _, value, _ = tensors(10, 7, 7, batch=2)
  logits = jax.random.normal(jax.random.key(11), (1, HEADS, 7, 7))
  cotangent = jax.random.normal(jax.random.key(12), value.shape)
  grad = jax.grad(lambda s: jnp.sum(
      fused.shared_scores_attention(s, None, lengths, value) * cotangent))(logits)
  np.testing.assert_array_equal(grad[..., 5:], 0.0)  # keys 5, 6 are padding in both examples
  if causal:
    np.testing.assert_array_equal(grad[..., 0, :], 0.0)
  assert np.all(np.abs(grad[..., 1:, :2]) > 0)  # the rest does learn


@pytest.mark.parametrize('attention_type', ['vanilla', 'orthogonal', 'random', 'factorized_random',
                                            'random+vanilla'])
def test_fast_paths_in_bfloat16_stay_close_to_the_float32_core(attention_type):
  lengths = fused.SequenceLengths(jnp.array([6, 4, 6]), jnp.array([6, 4, 6]), causal=True)
  x = helpers.inputs(13, BATCH, 6)
  mask = lengths.mask(6, 6)
  bias = helpers.random_bias(14, 6, 6)
  variables = helpers.init(helpers.build(attention_type), x)
  want = helpers.build(attention_type).apply(variables, x, x, mask, bias)
  options = {'fused': 'xla'} if registry.accepts_option(attention_type, 'fused') else {}
  got = helpers.build(attention_type, dtype=jnp.bfloat16, **options).apply(
      variables, x, x, mask, bias, lengths=lengths)
  assert got.dtype == jnp.bfloat16
  valid = valid_rows(lengths, 6)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got, np.float32)[valid], want[valid], atol=0.03 * scale)


def test_shared_scores_gradients_stay_finite_with_an_empty_example():
  """Length 0 next to real examples: zero output and gradients equal to the per-example path."""
  lengths = fused.SequenceLengths(jnp.array([6, 3, 1, 0]), jnp.array([6, 3, 1, 0]))
  _, _, value, bias = tensors(16, 6, 6, batch=4)
  logits = jax.random.normal(jax.random.key(17), (1, HEADS, 6, 6))
  valid = valid_rows(lengths, 6)
  cotangent = jax.random.normal(jax.random.key(18), value.shape) * valid[:, :, None, None]
  mask = lengths.mask(6, 6)
  shared = lambda s, v: fused.shared_scores_attention(s, bias, lengths, v)
  reference = lambda s, v: core_attention(s, mask, bias, v)
  np.testing.assert_array_equal(shared(logits, value)[3], 0.0)
  grads = [jax.grad(lambda s, v, f=f: jnp.sum(f(s, v) * cotangent), argnums=(0, 1))(logits, value)
           for f in (shared, reference)]
  for got, want in zip(*grads):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_an_unknown_fused_implementation_is_a_clear_error():
  x = helpers.inputs(19)
  module = helpers.build('vanilla', fused='cuda')
  with pytest.raises(ValueError, match=r"fused='cuda' is not a fused attention implementation; "
                                       r"use one of 'cudnn', 'xla', 'auto'"):
    module.init(jax.random.key(0), x, x)
