"""A variant's logits as a pure function of per-token features: what blockwise attention reads.

    logits[b, h, i, j] = function(params, query[b, i], key[b, j])

for every block of queries i and keys j (`kernels/blockwise.py`), so no `[batch, heads, q, k]`
tensor need exist. A variant gives its `Scores` in `core.Attention.block_scores`; the T5 position
bias gives its own (`position_bias`), and `plus` adds the two.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from synth_jax import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Scores:
  """A variant's logits, block by block.

  Attributes:
    function: `(params, query, key) -> [batch | 1, heads, q_block, k_block]` logits, pure (no
      Flax module, no captured arrays): `query` and `key` are the `query` / `key` pytrees cut to
      one block along their length axis (axis 1).
    params: pytree of arrays every block reads (tables, per-head scalars).
    query: pytree of per-query features, leaves `[batch | 1, q_len, ...]`.
    key: pytree of per-key features, leaves `[batch | 1, k_len, ...]`.
  Integer and bool leaves (positions, indices) get no gradient.
  """
  function: Callable
  params: Any
  query: Any
  key: Any

  def plus(self, other: 'Scores') -> 'Scores':
    """The logits of both added (a variant's and the T5 position bias)."""
    first, second = self.function, other.function

    def function(params, query, key):
      return first(params[0], query[0], key[0]) + second(params[1], query[1], key[1])
    return Scores(function, (self.params, other.params), (self.query, other.query),
                  (self.key, other.key))


def query_key(queries: Array, keys: Array, scale: float) -> Scores:
  """`scale * q . k` of queries `[batch | 1, q_len, heads, dim]` and keys `[batch | 1, k_len,
  heads, dim]` (float32 accumulation)."""
  def function(params, q, k):
    del params
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
    return logits if scale == 1.0 else logits * scale
  return Scores(function, (), queries, keys)


def position_bias(bias, q_len: int, k_len: int) -> Scores:
  """The T5 bias as `Scores` over token indices: a `layers.RelativeBias` read block by block, or
  a caller's dense `[1 | batch, heads, q_len, k_len]` array sliced (whose gradient is dense)."""
  query_index = jnp.arange(q_len, dtype=jnp.int32)[None]
  key_index = jnp.arange(k_len, dtype=jnp.int32)[None]
  if isinstance(bias, layers.RelativeBias):
    if (bias.q_len, bias.k_len) != (q_len, k_len):
      raise ValueError(f'the relative position bias covers {bias.q_len} queries and {bias.k_len} '
                       f'keys, but this attention has {q_len} and {k_len}.')
    dtype = bias.dtype

    def relative(params, q, k):
      table, buckets = params
      return layers.RelativeBias.block(table, buckets, q[0][:, None], k[0][None, :], q_len,
                                       dtype)[None]
    return Scores(relative, (bias.table, bias.buckets), query_index, key_index)

  def dense(bias, q, k):
    return bias[:, :, q[0]][:, :, :, k[0]]
  return Scores(dense, bias, query_index, key_index)
