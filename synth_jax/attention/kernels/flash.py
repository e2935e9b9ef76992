"""Query-key attention through `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).

softmax(q k^T * scale + bias) v without a `[batch, heads, q, k]` probability tensor in memory:
at T5-base shapes the reference keeps a 1.5 GiB float32 tensor per layer for the backward pass,
and moving it dominates attention's time (BENCHMARKS.md). Exact, given the mask as lengths
(unpacked rows); packed rows pass their dense mask, which costs memory traffic.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from synth_jax.attention import masks

Array = jax.Array


def flash_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                    mask: masks.Mask, scale: float, implementation: Optional[str]) -> Array:
  """softmax(query key^T * scale + bias) value, fused.

  Args:
    query: `[batch, q_len, heads, head_dim]`; key, value: `[batch, k_len, heads, head_dim]`.
    bias: `[1, heads, q_len, k_len]` or None (kept batch-free, so its gradient is one
      `[1, heads, q, k]` reduction inside the kernel).
    mask: the attention mask; its lengths when it has that form, else its dense form.
    implementation: 'cudnn', 'xla', or None (JAX chooses).

  Returns:
    `[batch, q_len, heads, head_dim]`; rows of padding queries are zero.
  """
  dtype = value.dtype
  query, key = query.astype(dtype), key.astype(dtype)
  if bias is not None:
    bias = bias.astype(dtype)
  lengths = mask.lengths()
  if lengths is None:
    dense = mask.dense()
    dense = jnp.broadcast_to(dense, dense.shape[:1] + (query.shape[2],) + dense.shape[2:])
    return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=dense, scale=scale,
                                        implementation=implementation)
  query_lengths, key_lengths = lengths
  # An empty example (length 0, e.g. batch padding in evaluation) would give the kernel rows
  # with no key at all; it sees one key instead, and its rows are zeroed below.
  at_least_one = lambda n: jnp.maximum(n, 1).astype(jnp.int32)
  out = jax.nn.dot_product_attention(
      query, key, value, bias=bias, scale=scale, is_causal=mask.causal,
      query_seq_lengths=at_least_one(query_lengths),
      key_value_seq_lengths=at_least_one(key_lengths), implementation=implementation)
  query_valid = jnp.arange(query.shape[1])[None, :] < query_lengths[:, None]
  return jnp.where(query_valid[:, :, None, None], out, 0).astype(dtype)
