"""The one mask object: which keys each query may see, and where queries and keys sit.

The network builds a `Mask` once per attention location (encoder self-attention, decoder
self-attention, cross-attention) from the token ids it has: padding (`tokens > 0`), packing
(segment ids and each token's position within its segment), causality, and, while decoding one
token at a time, the cache index. Every attention reads the same object:

  * `dense()` is the reference, a `[batch, 1 | heads, q_len, k_len]` bool mask;
  * `lengths()` is the same mask as per-example lengths when that form is exact (unpacked rows
    whose padding trails, no decode step), which the fused kernels take instead;
  * `query_positions` / `key_positions` and `query_offset` tell position-dependent variants
    (random synthesizers) where each token sits, so a packed example reads its score map exactly
    as it would alone.

T5X-style callers may still pass a dense array as the mask; `as_mask` wraps it.
"""
from typing import Optional

import flax
import jax
import jax.numpy as jnp

Array = jax.Array


def make_attention_mask(query_input: Array, key_input: Array, pairwise_fn=jnp.multiply,
                        dtype=jnp.float32) -> Array:
  """Pairwise mask `[batch, 1, q_len, k_len]` from `[batch, q_len]` and `[batch, k_len]`.

  With the default `pairwise_fn` and non-padding indicators (e.g. `tokens > 0`) this is the padding
  mask; with `jnp.equal` on segment ids it is the packing mask.
  """
  mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
  return mask[:, None].astype(dtype)


def make_causal_mask(x: Array, dtype=jnp.float32) -> Array:
  """Causal mask `[batch, 1, len, len]` for `[batch, len]` inputs: query i sees keys j <= i."""
  positions = jnp.broadcast_to(jnp.arange(x.shape[-1]), x.shape)
  return make_attention_mask(positions, positions, jnp.greater_equal, dtype)


def combine_masks(*masks: Optional[Array], dtype=jnp.float32) -> Optional[Array]:
  """Logical AND of the given masks (None entries ignored); None if all are None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  if len({m.ndim for m in masks}) != 1:
    raise ValueError(f'masks must share a rank, got shapes {[m.shape for m in masks]}')
  combined = masks[0] > 0
  for m in masks[1:]:
    combined = jnp.logical_and(combined, m > 0)
  return combined.astype(dtype)


def segment_positions(segment_ids: Array) -> Array:
  """Each token's position within its run of equal segment ids: `[batch, len]` -> `[batch, len]`.

  seqio's packing provides these as `*_positions`; this derives them when a batch lacks them.
  """
  index = jnp.arange(segment_ids.shape[1])
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


@flax.struct.dataclass
class Mask:
  """Which keys each query may attend to (see the module docstring).

  Attributes:
    query_valid: `[batch, q_len]` bool, the queries that are not padding.
    key_valid: `[batch, k_len]` bool, the keys that are not padding.
    query_segments, key_segments: `[batch, len]` segment ids of packed rows (a query sees only
      keys of its own segment), or None.
    query_positions, key_positions: `[batch, len]` each token's position within its segment
      (packed rows), or None: then positions are the indices (plus `step` for the query).
    explicit: a caller's dense `[batch, 1 | heads, q_len, k_len]` mask, ANDed with the rest.
    step: scalar int32 while decoding one token at a time: the query sits at position `step`
      and the keys after it are not generated yet. None otherwise.
    causal: query i sees keys j <= i only.
    trailing_padding: the valid tokens of every row come first (seqio's unpacked batches), so
      the mask is exactly its lengths (`lengths()`).
    self_attention: queries and keys are the same tokens.
  """
  query_valid: Array
  key_valid: Array
  query_segments: Optional[Array] = None
  key_segments: Optional[Array] = None
  query_positions: Optional[Array] = None
  key_positions: Optional[Array] = None
  explicit: Optional[Array] = None
  step: Optional[Array] = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  trailing_padding: bool = flax.struct.field(pytree_node=False, default=False)
  self_attention: bool = flax.struct.field(pytree_node=False, default=False)

  # -- constructors ------------------------------------------------------------------------------
  @classmethod
  def for_self_attention(cls, tokens: Array, segment_ids: Optional[Array] = None,
                         positions: Optional[Array] = None, causal: bool = False) -> 'Mask':
    """Self-attention over `[batch, len]` token ids (0 = padding), packed if `segment_ids`.

    `positions` default to `segment_positions(segment_ids)`; they are ignored when unpacked.
    """
    valid = tokens > 0
    if segment_ids is not None and positions is None:
      positions = segment_positions(segment_ids)
    if segment_ids is None:
      positions = None
    return cls(valid, valid, segment_ids, segment_ids, positions, positions, causal=causal,
               trailing_padding=segment_ids is None, self_attention=True)

  @classmethod
  def for_cross_attention(cls, query_valid: Array, key_tokens: Array,
                          query_segment_ids: Optional[Array] = None,
                          key_segment_ids: Optional[Array] = None,
                          query_positions: Optional[Array] = None) -> 'Mask':
    """Queries `[batch, q_len]` (bool) over the keys of token ids `[batch, k_len]`."""
    packed = key_segment_ids is not None
    if packed and query_positions is None:
      query_positions = segment_positions(query_segment_ids)
    return cls(query_valid, key_tokens > 0, query_segment_ids, key_segment_ids,
               query_positions if packed else None,
               segment_positions(key_segment_ids) if packed else None,
               trailing_padding=not packed)

  @classmethod
  def everything_visible(cls, batch: int, q_len: int, k_len: int) -> 'Mask':
    return cls(jnp.ones((batch, q_len), bool), jnp.ones((batch, k_len), bool),
               trailing_padding=True)

  def at_decode_step(self, step: Array) -> 'Mask':
    """This mask for the single query at position `step` of a cache of `k_len` keys."""
    return self.replace(step=step, causal=True, trailing_padding=False)

  # -- forms -------------------------------------------------------------------------------------
  @property
  def query_offset(self) -> Array:
    """Where query 0 sits: the decode step, else 0."""
    return jnp.array(0, jnp.int32) if self.step is None else self.step

  def dense(self) -> Array:
    """The reference form: `[batch, 1 | heads, q_len, k_len]` bool, True where attending is
    allowed."""
    q_len, k_len = self.query_valid.shape[1], self.key_valid.shape[1]
    mask = self.query_valid[:, :, None] & self.key_valid[:, None, :]
    if self.query_segments is not None:
      mask &= self.query_segments[:, :, None] == self.key_segments[:, None, :]
    if self.causal:
      query_index = self.query_offset + jnp.arange(q_len)
      mask &= (query_index[:, None] >= jnp.arange(k_len)[None, :])[None]
    mask = mask[:, None]
    if self.explicit is not None:
      mask &= self.explicit > 0
    return mask

  def lengths(self) -> Optional[tuple[Array, Array]]:
    """`([batch] query lengths, [batch] key lengths)` int32 when they say the whole mask, else None.

    Exact for unpacked rows with trailing padding outside decode steps (with `causal` on top).
    """
    if not self.trailing_padding or self.explicit is not None or self.step is not None:
      return None
    count = lambda valid: jnp.sum(valid, axis=1, dtype=jnp.int32)
    return count(self.query_valid), count(self.key_valid)


def as_mask(mask, batch: int, q_len: int, k_len: int) -> Mask:
  """A `Mask` from what a caller passed: a `Mask`, a dense `[batch, 1|heads, q, k]` array or
  None."""
  if isinstance(mask, Mask):
    return mask
  everything = Mask.everything_visible(batch, q_len, k_len)
  if mask is None:
    return everything
  return everything.replace(explicit=mask, trailing_padding=False)
