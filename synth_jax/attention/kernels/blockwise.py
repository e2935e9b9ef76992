"""Blockwise attention: any variant's logits, at flash memory, on any backend (pure JAX).

    out_i = sum_j softmax_j(s_ij) v_j,   s_ij = scores(params, query_i, key_j), masked keys -inf

is computed block by block (Rabe & Staats 2021; Dao 2023, FlashAttention-2): for each block of
queries, an online softmax over blocks of keys keeps a running maximum m_i, sum l_i and output,
so a step holds `[batch, heads, q_block, k_block]` logits at a time and keeps only the output and
the per-row log-sum-exp lse_i = m_i + log l_i for the backward pass. The backward pass recomputes
each block's logits through the variant's own score function and, with D_i = dout_i . out_i,

    p_ij = exp(s_ij - lse_i),  dv_j += p_ij dout_i,  ds_ij = p_ij (dout_i . v_j - D_i),

pulls ds back through that function (`jax.vjp`): the gradients of the variant's per-token features
and of its shared tables (R, W2, the T5 bias table) accumulate block by block, and no
`[batch, heads, q, k]` tensor is formed in either direction.

A variant joins by giving a `Scores`: a pure function of one block of query features, one block
of key features and shared parameters. Blocks that no query may see (after the causal diagonal,
past the longest example) are skipped. XLA's while loops run on CPU, GPU and TPU v3 alike, where
Pallas flash kernels do not.
"""
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from synth_jax.attention import masks
from synth_jax.attention.kernels import selection
from synth_jax.attention.scores import Scores

Array = jax.Array
DEFAULT_BLOCK = 512


def _is_float(x) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)


def _split(tree):
  """(float leaves, other leaves, a function joining them back into `tree`)."""
  leaves, treedef = jax.tree.flatten(tree)
  floats = [x if _is_float(x) else None for x in leaves]
  others = [None if _is_float(x) else x for x in leaves]

  def join(floats, others):
    return treedef.unflatten([f if f is not None else o for f, o in zip(floats, others)])
  return floats, others, join


def _to_blocks(x, block: int, count: int, edge: bool = True):
  """`[batch | 1, len, ...]` -> `[count, batch | 1, block, ...]`, padded to `count * block`.

  Features are padded with copies of the last token (`edge`): padding keys are masked, but their
  logits are still computed, and must stay finite (hyperbolic attention divides by each point's
  gap 1 - c|x|^2, which zero padding would make 0; a NaN times a zero cotangent is NaN).
  Masks are padded with False.
  """
  if x is None:
    return None
  pad = count * block - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode='edge' if edge else 'constant')
  x = x.reshape(x.shape[:1] + (count, block) + x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _from_blocks(x, length: int):
  """`[count, batch, block, ...]` -> `[batch, length, ...]`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape(x.shape[:1] + (-1,) + x.shape[3:])[:, :length]


def _block_size(length: int, block_size: int) -> tuple[int, int]:
  block = min(block_size, length)
  return block, -(-length // block)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Static facts of a call: block sizes and counts, the query length, causality."""
  q_block: int
  q_count: int
  k_block: int
  k_count: int
  q_len: int
  causal: bool


def _mask_blocks(mask: masks.Mask, layout: _Layout):
  """Per-block mask pieces: validity and segments of queries `[nq, b, bq]` and keys."""
  q_blocks = lambda x: _to_blocks(x, layout.q_block, layout.q_count, edge=False)
  k_blocks = lambda x: _to_blocks(x, layout.k_block, layout.k_count, edge=False)
  return {'query_valid': q_blocks(mask.query_valid), 'key_valid': k_blocks(mask.key_valid),
          'query_segments': q_blocks(mask.query_segments),
          'key_segments': k_blocks(mask.key_segments)}


def _allowed(layout: _Layout, mask_blocks, i, j):
  """`[batch, 1, q_block, k_block]` bool: which keys of block j each query of block i sees."""
  query_valid = mask_blocks['query_valid'][i]
  key_valid = mask_blocks['key_valid'][j]
  allowed = query_valid[:, None, :, None] & key_valid[:, None, None, :]
  if mask_blocks['query_segments'] is not None:
    allowed &= (mask_blocks['query_segments'][i][:, None, :, None]
                == mask_blocks['key_segments'][j][:, None, None, :])
  if layout.causal:
    query_index = i * layout.q_block + jnp.arange(layout.q_block)
    key_index = j * layout.k_block + jnp.arange(layout.k_block)
    allowed &= query_index[:, None] >= key_index[None, :]
  return allowed


def _dropped(x, mask_blocks, j):
  """`x` `[batch, heads, q_block, k_block]` times key block j's dropout multipliers, if any."""
  if 'dropout' not in mask_blocks:
    return x
  return x * jnp.transpose(mask_blocks['dropout'][j], (0, 2, 1))[:, :, None, :]


def _key_block_range(layout: _Layout, mask_blocks, i):
  """The key blocks query block i needs: from 0 to past its diagonal (causal) and to the last
  block holding a valid key of any example."""
  any_valid = jnp.any(mask_blocks['key_valid'], axis=(1, 2))  # [nk]
  last = jnp.max(jnp.where(any_valid, jnp.arange(layout.k_count), -1)) + 1
  if layout.causal:
    last = jnp.minimum(last, ((i + 1) * layout.q_block - 1) // layout.k_block + 1)
  return last


def _take(tree, index):
  return jax.tree.map(lambda x: None if x is None else x[index], tree,
                      is_leaf=lambda x: x is None)


def _zeros_like_f32(tree):
  return jax.tree.map(lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32), tree,
                      is_leaf=lambda x: x is None)


def blockwise_attention(scores: Scores, value: Array, mask: masks.Mask,
                        block_size: int = DEFAULT_BLOCK,
                        dropout: Optional[Array] = None) -> Array:
  """softmax(logits) value for the logits `scores` makes, one block of keys at a time.

  Args:
    scores: the variant's logits (plus any bias), block by block.
    value: `[batch, k_len, heads, head_dim]`.
    mask: the call's `Mask` (padding, segments, causal); not a decode step, no explicit array.
    block_size: queries and keys per block (shorter inputs take one block).
    dropout: attention dropout as multipliers of the probabilities, `[batch, heads, 1, k_len]`
      (0 or 1 / keep rate; one mask for every query, as T5 drops), or None.

  Returns:
    `[batch, q_len, heads, head_dim]` in `value.dtype`; queries with no visible key give 0
    (only cross-attention over an empty encoder input has such a valid query; the reference
    spreads it evenly over every key, the fused kernel reads key 0: none carries meaning).
  """
  if mask.step is not None or mask.explicit is not None:
    raise ValueError('blockwise attention takes a Mask without a decode step or explicit array.')
  q_len, k_len = mask.query_valid.shape[1], mask.key_valid.shape[1]
  q_block, q_count = _block_size(q_len, block_size)
  k_block, k_count = _block_size(k_len, block_size)
  layout = _Layout(q_block, q_count, k_block, k_count, q_len, mask.causal)
  p_float, p_other, p_join = _split(scores.params)
  q_float, q_other, q_join = _split(scores.query)
  k_float, k_other, k_join = _split(scores.key)
  blocks_q = lambda tree: [_to_blocks(x, q_block, q_count) for x in tree]
  blocks_k = lambda tree: [_to_blocks(x, k_block, k_count) for x in tree]
  mask_blocks = _mask_blocks(mask, layout)
  if dropout is not None:  # [b, h, 1, k] -> blocks [nk, b, bk, h]
    mask_blocks['dropout'] = _to_blocks(jnp.transpose(dropout[:, :, 0], (0, 2, 1)), k_block,
                                        k_count, edge=False)
  function = lambda params, query, key: scores.function(p_join(params, p_other), query, key)
  attend = _attention(_Call(function, layout, q_join, k_join))
  return attend(p_float, blocks_q(q_float), blocks_k(k_float),
                _to_blocks(value, k_block, k_count), blocks_q(q_other), blocks_k(k_other),
                mask_blocks)


@dataclasses.dataclass(frozen=True)
class _Call:
  """What a call's forward and backward passes share, none of it an array: the variant's score
  function, the layout, and how to join a block's float and other features back together."""
  function: Callable
  layout: _Layout
  q_join: Callable
  k_join: Callable

  def raw_logits(self, params, query, key, q_other, k_other, i, j):
    """Block (i, j)'s logits `[batch | 1, heads, bq, bk]` from its float features."""
    return self.function(params, self.q_join(query, _take(q_other, i)),
                         self.k_join(key, _take(k_other, j)))


@jax.named_scope('blockwise_forward')  # profiles attribute kernels to the scope
def _forward(call: _Call, params, q_float, k_float, value, q_other, k_other, mask_blocks):
  """Output `[nq, b, bq, h, d]` and row log-sum-exp `[nq, b, h, bq]` (inf for rows without keys)."""
  layout = call.layout
  batch, heads, head_dim = value.shape[1], value.shape[3], value.shape[4]

  def query_block(i):
    def key_block(j, carry):
      m, l, acc = carry
      s = call.raw_logits(params, _take(q_float, i), _take(k_float, j), q_other, k_other, i, j)
      s = jnp.where(_allowed(layout, mask_blocks, i, j), s.astype(jnp.float32), -jnp.inf)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(s - m_safe[..., None])
      correction = jnp.exp(m - m_safe)
      l = l * correction + jnp.sum(p, axis=-1)
      acc = acc * correction[..., None] + jnp.einsum(
          'bhqk,bkhd->bhqd', _dropped(p, mask_blocks, j).astype(value.dtype), value[j],
          preferred_element_type=jnp.float32)
      return m_new, l, acc

    shape = (batch, heads, layout.q_block)
    init = (jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros(shape + (head_dim,)))
    m, l, acc = jax.lax.fori_loop(0, _key_block_range(layout, mask_blocks, i), key_block, init)
    has_keys = l > 0
    out = jnp.where(has_keys[..., None], acc / jnp.where(has_keys, l, 1.0)[..., None], 0.0)
    lse = jnp.where(has_keys, m + jnp.log(jnp.where(has_keys, l, 1.0)), jnp.inf)
    return jnp.transpose(out, (0, 2, 1, 3)).astype(value.dtype), lse

  return jax.lax.map(query_block, jnp.arange(layout.q_count))


@jax.named_scope('blockwise_backward')
def _backward(call: _Call, residuals, grad):
  """Gradients of params, float query and key features and value, block by block."""
  layout = call.layout
  params, q_float, k_float, value, q_other, k_other, mask_blocks, out, lse = residuals
  grad = _to_blocks(grad, layout.q_block, layout.q_count)  # [nq, b, bq, h, d]
  # D_i = dout_i . out_i
  row_dot = jnp.einsum('nbqhd,nbqhd->nbhq', grad.astype(jnp.float32), out.astype(jnp.float32))
  add = lambda a, b: None if a is None else a + b.astype(jnp.float32)
  is_none = lambda x: x is None

  def key_block(i, j, carry):
    d_q, d_params, d_k, d_value = carry
    raw, pull = jax.vjp(lambda p, q, k: call.raw_logits(p, q, k, q_other, k_other, i, j),
                        params, _take(q_float, i), _take(k_float, j))
    allowed = _allowed(layout, mask_blocks, i, j)
    s = jnp.where(allowed, raw.astype(jnp.float32), -jnp.inf)
    p = jnp.exp(s - lse[i][..., None])  # [b, h, bq, bk]
    d_value_j = jnp.einsum('bhqk,bqhd->bkhd', _dropped(p, mask_blocks, j).astype(grad.dtype),
                           grad[i], preferred_element_type=jnp.float32)
    d_p = _dropped(jnp.einsum('bqhd,bkhd->bhqk', grad[i], value[j],
                              preferred_element_type=jnp.float32), mask_blocks, j)
    d_s = jnp.where(allowed, p * (d_p - row_dot[i][..., None]), 0.0)
    if raw.shape[0] != d_s.shape[0]:  # logits shared by the batch
      d_s = jnp.sum(d_s, axis=0, keepdims=True)
    g_params, g_q, g_k = pull(d_s.astype(raw.dtype))
    d_q = jax.tree.map(add, d_q, g_q, is_leaf=is_none)
    d_params = jax.tree.map(add, d_params, g_params, is_leaf=is_none)
    d_k = jax.tree.map(lambda acc, g: None if acc is None else acc.at[j].add(
        g.astype(jnp.float32)), d_k, g_k, is_leaf=is_none)
    return d_q, d_params, d_k, d_value.at[j].add(d_value_j)

  def query_block(carry, i):
    d_params, d_k, d_value = carry
    d_q, d_params, d_k, d_value = jax.lax.fori_loop(
        0, _key_block_range(layout, mask_blocks, i), lambda j, c: key_block(i, j, c),
        (_zeros_like_f32(_take(q_float, i)), d_params, d_k, d_value))
    return (d_params, d_k, d_value), d_q

  init = (_zeros_like_f32(params), _zeros_like_f32(k_float), jnp.zeros(value.shape, jnp.float32))
  (d_params, d_k, d_value), d_q = jax.lax.scan(query_block, init, jnp.arange(layout.q_count))
  cast = lambda grads, primals: jax.tree.map(
      lambda g, x: None if x is None else g.astype(x.dtype), grads, primals, is_leaf=is_none)
  return (cast(d_params, params), cast(d_q, q_float), cast(d_k, k_float),
          d_value.astype(value.dtype), None, None, None)


def _attention(call: _Call):
  """The custom-VJP attention of one call (a closure: `call` holds no arrays)."""

  @jax.custom_vjp
  def attend(*args):
    out, _ = _forward(call, *args)
    return _from_blocks(out, call.layout.q_len)

  def attend_forward(*args):
    out, lse = _forward(call, *args)
    return _from_blocks(out, call.layout.q_len), (*args, out, lse)

  attend.defvjp(attend_forward, lambda residuals, grad: _backward(call, residuals, grad))
  return attend


@jax.named_scope('row_top_k')
def row_top_k(scores: Scores, mask: masks.Mask, k: int, below: float,
              block_size: int = DEFAULT_BLOCK) -> tuple[Array, Array]:
  """Each query's k-th largest visible logit and where its ties end, one key block at a time.

  Keys a query may not see count as `below` (the reference's masked value). Returns
  `(threshold, last)`, `[batch, q_len, heads]` float32 and int32: key j is among the query's top k
  exactly when s_j > threshold, or s_j == threshold and j <= last, the tie rule of
  `jax.lax.top_k` (the lower index wins). A forward pass with no gradient.
  """
  q_len, k_len = mask.query_valid.shape[1], mask.key_valid.shape[1]
  q_block, q_count = _block_size(q_len, block_size)
  k_block, k_count = _block_size(k_len, block_size)
  layout = _Layout(q_block, q_count, k_block, k_count, q_len, mask.causal)
  params = jax.lax.stop_gradient(scores.params)
  query = jax.tree.map(lambda x: _to_blocks(jax.lax.stop_gradient(x), q_block, q_count),
                       scores.query)
  key = jax.tree.map(lambda x: _to_blocks(jax.lax.stop_gradient(x), k_block, k_count),
                     scores.key)
  mask_blocks = _mask_blocks(mask, layout)

  def query_block(i):
    def key_block(j, carry):
      values, indices = carry
      s = scores.function(params, _take(query, i), _take(key, j)).astype(jnp.float32)
      s = jnp.where(_allowed(layout, mask_blocks, i, j), s, below)
      index = jnp.broadcast_to(j * k_block + jnp.arange(k_block, dtype=jnp.int32), s.shape)
      # Carried entries come from earlier blocks: on ties top_k keeps them, the lower indices.
      values, chosen = selection.top_k(jnp.concatenate([values, s], axis=-1), k)
      indices = jnp.take_along_axis(jnp.concatenate([indices, index], axis=-1), chosen, axis=-1)
      return values, indices

    heads = jax.eval_shape(scores.function, params, _take(query, 0), _take(key, 0)).shape[1]
    shape = (mask.query_valid.shape[0], heads, q_block, k)
    init = (jnp.full(shape, -jnp.inf), jnp.full(shape, jnp.iinfo(jnp.int32).max, jnp.int32))
    # Blocks past the range hold no visible key: they could only fill a row's top k with
    # masked keys, which the threshold then keeps every visible key above anyway.
    values, indices = jax.lax.fori_loop(0, _key_block_range(layout, mask_blocks, i), key_block,
                                        init)
    threshold = values[..., -1]
    last = jnp.max(jnp.where(values == threshold[..., None], indices, -1), axis=-1)
    return jnp.transpose(threshold, (0, 2, 1)), jnp.transpose(last, (0, 2, 1))

  threshold, last = jax.lax.map(query_block, jnp.arange(q_count))
  return _from_blocks(threshold, q_len), _from_blocks(last, q_len)
