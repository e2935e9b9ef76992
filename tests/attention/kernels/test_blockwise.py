"""Blockwise attention (`kernels/blockwise.py`): equal to a plain softmax, values and gradients, for
every mask form and block size; the top-k pass keeps `jax.lax.top_k`'s keys; attention dropout
equals the reference's; and a training step's temporary memory grows linearly in length for every
variant on the blockwise path.

Every variant and mixture against the reference path through the network's `Dispatch` is in
`test_dispatch.py`; this file tests the op itself.
"""
import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax import layers
from synth_jax.attention import kernels
from synth_jax.attention import masks
from synth_jax.attention import registry
from synth_jax.attention import scores
from synth_jax.attention.kernels import blockwise
from synth_jax.attention.kernels import flash
from synth_jax.attention.kernels import selection
from tests.attention import helpers

BATCH, HEADS, DIM = 3, 2, 4
SEGMENTS = np.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1], [1, 2, 2, 3, 3, 3, 3]])
LENGTHS = [7, 5, 2]


def mask_of(form, length=7):
  if form == 'cross':  # 5 queries over 7 keys, own lengths; one example sees no key at all
    return masks.Mask.for_cross_attention(
        jnp.arange(5)[None] < jnp.array([5, 3, 4])[:, None],
        jnp.where(jnp.arange(length)[None] < jnp.array([7, 4, 0])[:, None], 5, 0))
  causal = form.endswith('causal')
  if form.startswith('packed'):
    return masks.Mask.for_self_attention(jnp.asarray(SEGMENTS) * 3, jnp.asarray(SEGMENTS),
                                         causal=causal)
  tokens = jnp.where(jnp.arange(length)[None] < jnp.array(LENGTHS)[:, None], 4, 0)
  return masks.Mask.for_self_attention(tokens, causal=causal)


def normal(seed, *shape):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def naive(logits, value, mask):
  """softmax over the visible keys (rows without one: 0), then the mix: the plain definition."""
  allowed = mask.dense()
  logits = jnp.where(allowed, logits, -jnp.inf)
  top = jnp.max(logits, axis=-1, keepdims=True)
  weights = jnp.where(allowed, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0)), 0)
  total = jnp.sum(weights, axis=-1, keepdims=True)
  probabilities = weights / jnp.where(total > 0, total, 1)
  return jnp.einsum('bhqk,bkhd->bqhd', probabilities, value)


def relative_bias(table, q_len, k_len):
  buckets = layers.relative_position_bucket(np.arange(-(q_len - 1), k_len), True)
  return layers.RelativeBias(table, jnp.asarray(buckets, jnp.int32), None, q_len, k_len)


def loss_and_grads(attend, args, mask):
  valid = mask.query_valid[:, :, None, None]
  loss = lambda *a: jnp.sum(jnp.where(valid, attend(*a), 0) ** 2)
  return jnp.where(valid, attend(*args), 0), jax.grad(loss, argnums=range(len(args)))(*args)


@pytest.mark.parametrize('block_size', [3, 16])
@pytest.mark.parametrize('form', ['padding', 'padding_causal', 'packed', 'packed_causal', 'cross'])
@pytest.mark.parametrize('bias_form', ['none', 'dense', 'relative'])
def test_blockwise_equals_the_plain_softmax_in_values_and_gradients(block_size, form, bias_form):
  mask = mask_of(form)
  q_len, k_len = mask.query_valid.shape[1], mask.key_valid.shape[1]
  args = (normal(0, BATCH, q_len, HEADS, DIM), normal(1, BATCH, k_len, HEADS, DIM),
          normal(2, BATCH, k_len, HEADS, DIM), normal(3, HEADS, 32),
          normal(4, 1, HEADS, q_len, k_len))

  def bias_of(table, dense):
    if bias_form == 'relative':
      return relative_bias(table, q_len, k_len)
    return dense if bias_form == 'dense' else None

  def plain(q, k, v, table, dense):
    logits = 0.7 * jnp.einsum('bqhd,bkhd->bhqk', q, k)
    bias = bias_of(table, dense)
    return naive(logits if bias is None else logits + attention.core.dense_bias(bias), v, mask)

  def blocked(q, k, v, table, dense):
    block = scores.query_key(q, k, 0.7)
    bias = bias_of(table, dense)
    if bias is not None:
      block = block.plus(scores.position_bias(bias, q_len, k_len))
    return blockwise.blockwise_attention(block, v, mask, block_size)

  want, want_grads = loss_and_grads(plain, args, mask)
  got, got_grads = loss_and_grads(blocked, args, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for name, g, w in zip(['query', 'key', 'value', 'table', 'dense bias'], got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6, err_msg=name)
  if bias_form != 'relative':
    assert not np.any(got_grads[3])
  if bias_form != 'dense':
    assert not np.any(got_grads[4])


def test_batch_shared_logits_get_the_summed_gradient():
  """Logits `[1, heads, q, k]` (a random synthesizer's table) broadcast over the batch; their
  gradient sums the examples'."""
  mask = mask_of('padding_causal')
  table, value = normal(5, HEADS, 7, 7), normal(6, BATCH, 7, HEADS, DIM)
  rows = lambda t, q, k: jnp.transpose(t[:, q[:, :, None], k[:, None, :]], (1, 0, 2, 3))
  index = jnp.arange(7)[None]
  plain = lambda t, v: naive(t[None], v, mask)
  blocked = lambda t, v: blockwise.blockwise_attention(scores.Scores(rows, t, index, index), v,
                                                       mask, 3)
  want, want_grads = loss_and_grads(plain, (table, value), mask)
  got, got_grads = loss_and_grads(blocked, (table, value), mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)


def test_a_query_that_sees_no_key_gives_zero_and_a_finite_gradient():
  mask = mask_of('cross')  # example 2 has no key
  q, k, v = normal(0, BATCH, 5, HEADS, DIM), normal(1, BATCH, 7, HEADS, DIM), normal(2, BATCH, 7,
                                                                                    HEADS, DIM)
  attend = lambda q, k, v: blockwise.blockwise_attention(scores.query_key(q, k, 1.0), v, mask, 2)
  out = attend(q, k, v)
  assert not np.any(out[2])
  grads = jax.grad(lambda *a: jnp.sum(attend(*a) ** 2), argnums=(0, 1, 2))(q, k, v)
  assert all(np.all(np.isfinite(g)) for g in grads)


def test_attention_dropout_equals_the_reference_dropout():
  """Under 'blockwise' a training step drops the reference's probabilities: the same mask."""
  mask = mask_of('padding_causal', 7)
  x = helpers.inputs(0, BATCH, 7)
  reference = helpers.build('neg_l2', dropout_rate=0.3)
  blocked = helpers.build('neg_l2', dropout_rate=0.3, dispatch=dataclasses.replace(
      kernels.dispatch_for('blockwise'), block_size=3))
  variables = helpers.init(reference, x)
  rngs = {'dropout': jax.random.key(7)}
  run = lambda module: module.apply(variables, x, x, mask, deterministic=False, rngs=rngs)
  valid = np.asarray(mask.query_valid)
  want = run(reference)
  np.testing.assert_allclose(run(blocked)[valid], want[valid], rtol=1e-5, atol=1e-5)
  no_dropout = reference.apply(variables, x, x, mask)
  assert not np.allclose(want[valid], no_dropout[valid], atol=1e-3)


# 'passes', 'chunks': the selection passes over the row, and over chunks (of 2, NVIDIA GPUs: 8)
@pytest.mark.parametrize('passes', ['platform', 'passes', 'chunks'])
@pytest.mark.parametrize('k', [1, 3, 7, 9])
@pytest.mark.parametrize('form', ['padding', 'packed_causal'])
def test_row_top_k_keeps_the_keys_lax_top_k_keeps_ties_included(k, form, passes, monkeypatch):
  if passes == 'passes':
    monkeypatch.setattr(selection, 'top_k', selection.by_selection)
  if passes == 'chunks':
    monkeypatch.setattr(selection, 'top_k', lambda v, k: selection.by_chunks(v, k, chunk=2))
  mask = mask_of(form)
  # Integer-valued logits: many exact ties, which the lower key index must win.
  logits = jnp.round(2 * normal(9, BATCH, HEADS, 7, 7))
  query = jnp.transpose(logits, (0, 2, 1, 3))  # per-query rows as features [b, q, h, k]
  index = jnp.arange(7)[None]
  row = lambda p, q, key_index: jnp.transpose(
      jnp.take(q, key_index[0], axis=-1), (0, 2, 1, 3))
  threshold, last = blockwise.row_top_k(scores.Scores(row, (), query, index), mask, min(k, 7),
                                        -1e10, block_size=3)
  visible = jnp.where(mask.dense(), logits, -1e10)
  _, chosen = jax.lax.top_k(visible, min(k, 7))
  want = np.zeros(logits.shape, bool)
  np.put_along_axis(want, np.asarray(chosen), True, axis=-1)
  threshold = jnp.transpose(threshold, (0, 2, 1))[..., None]
  last = jnp.transpose(last, (0, 2, 1))[..., None]
  got = (visible > threshold) | ((visible == threshold) & (jnp.arange(7) <= last))
  np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize('variant,form', [('vanilla', 'padding_causal'),
                                          ('factorized_random', 'packed_causal')])
def test_a_head_dimension_beyond_the_fused_kernel_runs_blockwise_and_says_so_once(
    variant, form, caplog, monkeypatch):
  """Queries and values alike: factorized_random's queries are rank 8, its values head_dim."""
  calls = []
  original = blockwise.blockwise_attention
  monkeypatch.setattr(blockwise, 'blockwise_attention',
                      lambda *a, **k: calls.append(1) or original(*a, **k))
  monkeypatch.setattr(flash, '_said', set())
  dispatch = kernels.dispatch_for('cudnn')
  module = helpers.build(variant, head_dim=136, dispatch=dispatch)
  reference = helpers.build(variant, head_dim=136)
  mask = mask_of(form)
  x = helpers.inputs(0, BATCH, 7)
  variables = helpers.init(reference, x)
  with caplog.at_level(logging.WARNING):
    got = module.apply(variables, x, x, mask)
    module.apply(variables, x, x, mask)
  assert len(calls) == 2
  said = [r.message for r in caplog.records if 'head dimension 136' in r.message]
  assert said == [f'{variant} attention: head dimension 136 is beyond the fused kernel (128); '
                  'it runs blockwise.']
  valid = np.asarray(mask.query_valid)
  np.testing.assert_allclose(got[valid], reference.apply(variables, x, x, mask)[valid],
                             rtol=1e-5, atol=1e-5)


def test_blockwise_execution_refuses_a_dense_mask_array_naming_the_executions_that_take_it():
  x = helpers.inputs(0, BATCH, 7)
  module = helpers.build('hyperbolic', dispatch=kernels.dispatch_for('blockwise'))
  variables = helpers.init(helpers.build('hyperbolic'), x)
  dense = jnp.tril(jnp.ones((7, 7)))[None, None]
  with pytest.raises(ValueError, match=r"hyperbolic attention: attention_execution='blockwise' "
                                       r"has no path for a dense mask array .* use "
                                       r"attention_execution 'fast' or 'reference'"):
    module.apply(variables, x, x, dense)


# A random synthesizer's parameter is its `[heads, max_q, max_k]` map, so its gradient (and
# memory) is quadratic in the maximum length whatever the path: the property holds for the rest.
QUADRATIC_PARAMETERS = {'random', 'fixed_random'}
LINEAR_MEMORY = [v for v in helpers.ALL_TYPES
                 if QUADRATIC_PARAMETERS.isdisjoint(registry.members(v))]


def step_temporary_bytes(variant, length, causal):
  """XLA's temporary memory of a compiled value-and-gradient step, T5 bias included."""
  module = helpers.build(variant, num_heads=1, head_dim=4, max_query_length=length,
                         max_key_length=length, dispatch=dataclasses.replace(
                             kernels.dispatch_for('blockwise'), block_size=128))
  x = jax.ShapeDtypeStruct((1, length, 8), jnp.float32)
  tokens = jnp.ones((1, length), jnp.int32)
  mask = masks.Mask.for_self_attention(tokens, causal=causal)
  variables = jax.eval_shape(lambda x: nn.unbox(module.init(jax.random.key(0), x, x)), x)
  bias_module = layers.RelativePositionBiases(num_heads=1)

  def loss(params, others, table, x):
    bias = bias_module.apply({'params': {'rel_embedding': table}}, length, length,
                             method=bias_module.table_bias).replace(values=None)
    bias = bias if attention.uses_position_bias(variant) else None
    return jnp.sum(module.apply({**others, 'params': params}, x, x, mask, bias) ** 2)
  others = {k: v for k, v in variables.items() if k != 'params'}
  table = jax.ShapeDtypeStruct((1, 32), jnp.float32)
  compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 2, 3))).lower(
      variables['params'], others, table, x).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize('variant', LINEAR_MEMORY)
def test_a_blockwise_training_step_uses_memory_linear_in_length(variant):
  """Doubling the length from 2k to 4k tokens at most doubles (plus slack) the step's temporary
  memory, which stays below a quarter of one `[q, k]` float32 score matrix (blocks of 128: the
  per-block temporaries, such as the bias's one-hot `[buckets, 128, 128]`, are small)."""
  causal = variant not in ('factorized_random+orthogonal',)
  short, long = (step_temporary_bytes(variant, n, causal) for n in (2048, 4096))
  scores_4k = 4096 * 4096 * 4
  assert long < 2.3 * short, (short, long)
  assert long < scores_4k / 4, (long, scores_4k)


def test_a_bias_table_of_other_lengths_is_a_clear_error():
  bias = relative_bias(normal(0, HEADS, 32), 5, 5)
  with pytest.raises(ValueError, match='the relative position bias covers 5 queries and 5 keys, '
                                       'but this attention has 7 and 7'):
    scores.position_bias(bias, 7, 7)


def test_only_a_named_cudnn_kernel_limits_the_head_dimension():
  """cuDNN takes up to 128 after padding to 8; with no implementation named JAX picks one."""
  assert flash.fits(128, 'cudnn') and not flash.fits(129, 'cudnn')
  assert flash.fits(512, None) and flash.fits(512, 'xla')
