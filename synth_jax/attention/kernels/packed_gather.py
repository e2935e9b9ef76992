"""A position-indexed score map read within packed segments, with a gradient free of collisions.

The fast form of `core.table_logits` for packed self-attention. Token q sits at position s(q)
within its segment, which starts at row offset o(q) = q - s(q), and its logits are
`table[h, s(q), s(k)]` for the keys k of its own segment. Autodiff of that gather scatter-adds every example's gradient into the same
`[heads, max_q, max_k]` cells (a few hundred colliding atomic adds per cell at batch 128:
nondeterministic, and the costliest kernel of the step). The gradient here is exact and
collision-free:

  1. shift each query row to its segment start: g'[b, h, q, j] = g[b, h, q, o(q) + j], zero
     where that key is outside q's segment (a gather);
  2. sum the rows that share a position: d_table[h, i, j] = sum_{b, q: s(q) = i} g'[b, h, q, j],
     one matmul against the one-hot `[b, q, i]` of the positions.
"""
import jax
import jax.numpy as jnp

Array = jax.Array


def _segment_starts(positions: Array) -> Array:
  """o(q) = q - s(q): `[batch, len]` row offset of each token's segment."""
  return jnp.arange(positions.shape[1])[None, :] - positions


@jax.custom_vjp
def gather_within_segments(table: Array, positions: Array) -> Array:
  """`table[h, s(q), s(k)]` where q and k share a segment, else 0.

  Args:
    table: `[heads, max_q, max_k]` score map.
    positions: `[batch, len]` int position of each token within its (contiguous) segment.

  Returns:
    `[batch, heads, len, len]` in `table.dtype`.
  """
  starts = _segment_starts(positions)
  same_segment = starts[:, :, None] == starts[:, None, :]  # [b, q, k]
  gathered = jax.vmap(lambda s: table[:, s[:, None], s[None, :]])(positions)  # [b, h, q, k]
  return jnp.where(same_segment[:, None], gathered, 0).astype(table.dtype)


def _forward(table, positions):
  # The table (a parameter, alive anyway) is kept only for its shape and dtype.
  return gather_within_segments(table, positions), (positions, table)


def _backward(residuals, grad):
  positions, table = residuals
  _, max_q, max_k = table.shape
  length = positions.shape[1]
  starts = _segment_starts(positions)  # [b, q]
  keys = starts[:, :, None] + jnp.arange(max_k)[None, None, :]  # [b, q, j]: key o(q) + j
  inside = keys < length
  keys = jnp.minimum(keys, length - 1)
  inside &= jnp.take_along_axis(starts, keys.reshape(keys.shape[0], -1), axis=1).reshape(
      keys.shape) == starts[:, :, None]  # the key o(q) + j is in q's segment
  shifted = jnp.take_along_axis(grad, keys[:, None], axis=-1)  # [b, h, q, j]
  shifted = jnp.where(inside[:, None], shifted, 0).astype(jnp.float32)
  one_hot = (positions[:, :, None] == jnp.arange(max_q)).astype(jnp.float32)  # [b, q, i]
  table_grad = jnp.einsum('bqi,bhqj->hij', one_hot, shifted)
  return table_grad.astype(table.dtype), None


gather_within_segments.defvjp(_forward, _backward)
