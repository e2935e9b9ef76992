"""Batch-shared scores normalized once equal a per-example softmax: values, gradients, padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import core
from synth_jax.attention import masks
from synth_jax.attention.kernels import shared_scores
from tests.attention import helpers

BATCH, HEADS, HEAD_DIM = 3, 2, 8

# (key lengths, length, causal) of encoder and decoder self-attention.
CASES = {
    'encoder': ([7, 4, 1], 7, False),
    'decoder': ([5, 3, 5], 5, True),
}


def self_attention_mask(lengths, length, causal=False):
  tokens = np.where(np.arange(length)[None] < np.asarray(lengths)[:, None], 5, 0)
  return masks.Mask.for_self_attention(jnp.asarray(tokens), causal=causal)


def tensors(seed, length, batch=BATCH):
  """Shared logits `[1, h, L, L]`, a bias `[1, h, L, L]`, values `[b, L, h, d]`."""
  keys = jax.random.split(jax.random.key(seed), 3)
  logits = 2.0 * jax.random.normal(keys[0], (1, HEADS, length, length))
  bias = jax.random.normal(keys[1], (1, HEADS, length, length))
  value = jax.random.normal(keys[2], (batch, length, HEADS, HEAD_DIM))
  return logits, bias, value


def shared(lengths, causal):
  return lambda logits, bias, value: shared_scores.shared_scores_attention(
      logits, bias, jnp.asarray(lengths, jnp.int32), value, causal)


def per_example(mask):
  return lambda logits, bias, value: core.mix(core.normalize(logits, mask.dense(), bias), value)


def assert_gradients_equal(lengths, length, causal, logits, bias, value, seed):
  mask = self_attention_mask(lengths, length, causal)
  valid = np.asarray(mask.query_valid)
  cotangent = jax.random.normal(jax.random.key(seed), value.shape) * valid[:, :, None, None]
  grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2)))(
      logits, bias, value) for f in (shared(lengths, causal), per_example(mask))]
  for got, want in zip(*grads):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('case', sorted(CASES))
def test_shared_scores_attention_equals_a_per_example_softmax(case):
  lengths, length, causal = CASES[case]
  logits, bias, value = tensors(2, length)
  mask = self_attention_mask(lengths, length, causal)
  valid = np.asarray(mask.query_valid)
  np.testing.assert_allclose(shared(lengths, causal)(logits, bias, value)[valid],
                             per_example(mask)(logits, bias, value)[valid], rtol=1e-5, atol=1e-5)
  assert_gradients_equal(lengths, length, causal, logits, bias, value, seed=4)


def test_shared_scores_attention_ignores_padding_values_and_survives_empty_examples():
  _, _, value = tensors(5, 4, batch=2)
  logits = jax.random.normal(jax.random.key(6), (1, HEADS, 4, 4))
  attend = lambda value: shared(lengths=[2, 0], causal=False)(logits, None, value)
  out = attend(value)
  garbage = value.at[:, 2:].set(1e6)  # padding keys of example 0, everything of example 1
  np.testing.assert_array_equal(attend(garbage), out)
  np.testing.assert_array_equal(out[1], 0.0)  # no keys: zeros, not NaN


def test_shared_scores_attention_normalizes_once_for_the_whole_batch():
  """Its cost does not grow a `[batch, heads, q, k]` tensor: no value in the program has one."""
  logits, _, value = tensors(7, 6)
  attend = shared(lengths=[6, 3, 5], causal=False)
  loss = lambda logits, value: jnp.sum(attend(logits, None, value) ** 2)
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(logits, value)
  shapes = helpers.traced_shapes(jaxpr)
  assert (BATCH, HEADS, 6, 6) not in shapes and (HEADS, BATCH, 6, 6) not in shapes
  assert (HEADS, 6, 6) in shapes


@pytest.mark.parametrize('causal', [False, True])
def test_shared_scores_gradient_is_exactly_zero_where_no_output_depends_on_the_score(causal):
  """Keys padded everywhere and the one-key first causal row: 0, not rounding noise."""
  logits, _, value = tensors(10, 7, batch=2)
  cotangent = jax.random.normal(jax.random.key(12), value.shape)
  attend = shared(lengths=[5, 3], causal=causal)
  grad = jax.grad(lambda s: jnp.sum(attend(s, None, value) * cotangent))(logits)
  np.testing.assert_array_equal(grad[..., 5:], 0.0)  # keys 5, 6 are padding in both examples
  if causal:
    np.testing.assert_array_equal(grad[..., 0, :], 0.0)
  assert np.all(np.abs(grad[..., 1:, :2]) > 0)  # the rest does learn


def test_shared_scores_gradients_stay_finite_with_an_empty_example():
  """Length 0 next to real examples: zero output and gradients equal to the per-example path."""
  lengths = [6, 3, 1, 0]
  logits, bias, value = tensors(16, 6, batch=4)
  np.testing.assert_array_equal(shared(lengths, False)(logits, bias, value)[3], 0.0)
  assert_gradients_equal(lengths, 6, False, logits, bias, value, seed=18)


@pytest.mark.parametrize('causal', [False, True])
def test_shared_scores_in_bfloat16_stay_close_to_float32(causal):
  lengths, length = [6, 4, 6], 6
  logits, bias, value = tensors(19, length)
  mask = self_attention_mask(lengths, length, causal)
  want = per_example(mask)(logits, bias, value)
  got = shared(lengths, causal)(logits, bias, value.astype(jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  valid = np.asarray(mask.query_valid)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got, np.float32)[valid], want[valid], atol=0.03 * scale)
