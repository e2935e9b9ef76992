"""Position-indexed scores read at the positions a `Mask` gives each query and key.

Synthesizers whose scores are indexed by position (a random synthesizer's table R[h, i, j], a
dense synthesizer's row over key positions) read them here, so a packed example, whose tokens sit
at positions within their segment, reads exactly what it would read alone.
"""
import jax
import jax.numpy as jnp

from synth_jax.attention import masks

Array = jax.Array


def table_logits(table: Array, mask: masks.Mask, q_len: int, k_len: int) -> Array:
  """Logits read from a position-indexed `table[heads, query position, key position]`.

  Unpacked: rows `offset .. offset + q_len`, `[1, heads, q_len, k_len]`, shared by the batch.
  Packed: each pair at its positions within the segments, `[batch, heads, q_len, k_len]`.
  """
  if mask.query_positions is None:
    rows = jax.lax.dynamic_slice_in_dim(table, mask.query_offset, q_len, axis=1)
    return rows[None, :, :, :k_len]
  gather = lambda q, k: table[:, q[:, None], k[None, :]]
  return jax.vmap(gather)(mask.query_positions, mask.key_positions)


def key_columns(scores: Array, mask: masks.Mask, k_len: int) -> Array:
  """Scores over every key position `[batch, heads, q, max_key]` -> those of the keys."""
  if mask.key_positions is None:
    return scores[..., :k_len]
  return jnp.take_along_axis(scores, mask.key_positions[:, None, None, :], axis=-1)


def query_index(mask: masks.Mask, q_len: int) -> Array:
  """`[batch | 1, q_len]` position of each query: within its segment, or offset + index."""
  if mask.query_positions is not None:
    return mask.query_positions
  return (mask.query_offset + jnp.arange(q_len))[None]


def key_index(mask: masks.Mask, k_len: int) -> Array:
  """`[batch | 1, k_len]` position of each key: within its segment, or its index."""
  if mask.key_positions is not None:
    return mask.key_positions
  return jnp.arange(k_len)[None]
