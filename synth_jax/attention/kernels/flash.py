"""Query-key attention through `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).

softmax(q k^T * scale + bias) v without a `[batch, heads, q, k]` probability tensor in memory:
at T5-base shapes the reference keeps a 1.5 GiB float32 tensor per layer for the backward pass,
and moving it dominates attention's time (BENCHMARKS.md). Exact, given the mask as lengths
(unpacked rows); packed rows pass their dense mask, which costs memory traffic.
"""
import logging
from typing import Optional

import jax
import jax.numpy as jnp

from synth_jax.attention import masks

Array = jax.Array
# cuDNN's fused attention takes head dimensions that are multiples of 8 up to 128.
CUDNN_MAX_HEAD_DIM = 128
_said = set()


def padded_head_dim(head_dim: int) -> int:
  return -(-head_dim // 8) * 8


def fits(head_dim: int, implementation: Optional[str]) -> bool:
  """Whether the fused kernel takes heads of `head_dim` (the widest of query, key and value,
  after padding to 8). With no implementation named, JAX chooses one that takes them."""
  return implementation != 'cudnn' or padded_head_dim(head_dim) <= CUDNN_MAX_HEAD_DIM


def say_once(message: str):
  """Logs `message` the first time it is given (one line, not one per layer and step)."""
  if message not in _said:
    _said.add(message)
    logging.warning(message)


def _pad_heads(x: Array, head_dim: int) -> Array:
  return jnp.pad(x, [(0, 0)] * 3 + [(0, head_dim - x.shape[-1])])


def flash_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                    mask: masks.Mask, scale: float, implementation: Optional[str]) -> Array:
  """softmax(query key^T * scale + bias) value, fused.

  Args:
    query: `[batch | 1, q_len, heads, d]`; key: `[batch | 1, k_len, heads, d]`; value:
      `[batch, k_len, heads, head_dim]`. Head dimensions are zero-padded to one multiple of 8
      (zeros add nothing to q . k; the value's padding is cut from the output).
    bias: `[1, heads, q_len, k_len]` or None (kept batch-free, so its gradient is one
      `[1, heads, q, k]` reduction inside the kernel).
    mask: the attention mask; its lengths when it has that form, else its dense form.
    implementation: 'cudnn', 'xla', or None (JAX chooses).

  Returns:
    `[batch, q_len, heads, head_dim]`; rows of padding queries are zero.
  """
  dtype = value.dtype
  batch, head_dim = value.shape[0], value.shape[-1]
  width = padded_head_dim(max(query.shape[-1], head_dim))
  query = _pad_heads(jnp.broadcast_to(query, (batch,) + query.shape[1:]).astype(dtype), width)
  key = _pad_heads(jnp.broadcast_to(key, (batch,) + key.shape[1:]).astype(dtype), width)
  value = _pad_heads(value, width)
  if bias is not None:
    bias = bias.astype(dtype)
  lengths = mask.lengths()
  if lengths is None:
    dense = mask.dense()
    dense = jnp.broadcast_to(dense, dense.shape[:1] + (query.shape[2],) + dense.shape[2:])
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=dense, scale=scale,
                                        implementation=implementation)[..., :head_dim]
  query_lengths, key_lengths = lengths
  # An empty example (length 0, e.g. batch padding in evaluation) would give the kernel rows
  # with no key at all; it sees one key instead, and its rows are zeroed below.
  at_least_one = lambda n: jnp.maximum(n, 1).astype(jnp.int32)
  out = jax.nn.dot_product_attention(
      query, key, value, bias=bias, scale=scale, is_causal=mask.causal,
      query_seq_lengths=at_least_one(query_lengths),
      key_value_seq_lengths=at_least_one(key_lengths), implementation=implementation)
  query_valid = jnp.arange(query.shape[1])[None, :] < query_lengths[:, None]
  return jnp.where(query_valid[:, :, None, None], out[..., :head_dim], 0).astype(dtype)
