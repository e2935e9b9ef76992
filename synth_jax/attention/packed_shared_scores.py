"""Batch-shared logits over packed rows, normalized once per step (random synthesizers).

Each segment of a packed row is self-attention of one example that starts at position 0, as if it
were alone: logits[h, i, j] at the positions i, j within the segment. Moved to a slot of its own
(`segment_slots`), a segment is an unpacked example, so `fused.mix_keys_minor` (softmax of
the shared scores once per step, two matmuls, no `[batch, heads, len, len]` tensor) applies to
each group of slots.

Two conditions send a batch to the general, per-example path instead, chosen on the device by
`lax.cond`: a row with more segments than slots, and a slot group whose shortest segment's keys
all score more than `SHARED_SOFTMAX_RANGE` below the best key the group normalizes with (the
shared softmax could then underflow their weights in float32; trained score maps stay far
inside this range).
"""
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from synth_jax.attention import fused
from synth_jax.attention import segment_slots

Array = jax.Array

# exp(-60) ~ 1e-26 keeps ~12 orders of magnitude of float32 range below the smallest weight.
SHARED_SOFTMAX_RANGE = 60.0


def packed_shared_scores_attention(logits: Array, bias: Optional[Array],
                                   segments: segment_slots.PackedSegments, value: Array,
                                   per_example: Callable[..., Array]) -> Array:
  """Softmax over each segment's keys of batch-shared logits, read in the segment's own frame.

  Args:
    logits: `[1, heads, len, len]`, the same for every example, indexed by the query and key
      positions within their segment.
    bias: `[1, heads, len, len]` or None, read the same way: right for T5's relative-position
      bias, which depends on j - i only; a bias that depends on absolute row positions is not
      supported here.
    segments: the packing of the batch (self-attention: queries and keys are the same tokens).
    value: `[batch, len, heads, head_dim]`.
    per_example: the general path, `([heads, len, len] float32 scores, value, segments)` ->
      `[batch, len, heads, head_dim]` (`core.packed_per_example_attention`).

  Returns:
    `[batch, len, heads, head_dim]` in `value.dtype`. Rows of padding tokens are arbitrary: no
    query attends to them and the loss skips them.
  """
  if logits.shape[-2] != value.shape[1] or logits.shape[-1] != value.shape[1]:
    raise ValueError(f'packed shared-score attention is self-attention: logits '
                     f'{logits.shape} must be [1, heads, len, len] for values {value.shape}.')
  return _slots_or_per_example(per_example, fused.batch_free_scores(logits, bias), value,
                               segments)


def slots_apply(scores: Array, segments: segment_slots.PackedSegments) -> Array:
  """`[]` bool: every row fits the slots, and no segment loses its weights to the shared softmax.

  A slot group normalizes each query row over the keys up to its longest segment. Non-causal,
  a shorter segment's query reads only the keys j < n of its own segment, with weights
  exp(score - best of the row), the best perhaps past n: underflow takes a gap of ~87. This
  refuses gaps over `SHARED_SOFTMAX_RANGE`, measured for each group's shortest segment, which
  bounds the gap of every other (two row reductions of the score map per group). Causal queries
  see only keys j <= i, all of their own segment, so they are always safe.
  """
  applies = segments.fits
  if segments.causal:
    return applies
  for first, count, capacity in segment_slots.slot_groups(scores.shape[-1], segments.num_slots):
    lengths = segments.group_lengths(first, count)
    longest = jnp.max(lengths)
    shortest = jnp.min(jnp.where(lengths > 0, lengths, capacity))
    keys = jnp.arange(capacity)
    group_scores = scores[:, :capacity, :capacity]
    row_max = lambda below: jnp.max(jnp.where(keys < below, group_scores, -jnp.inf), axis=-1)
    gap = row_max(jnp.maximum(longest, 1)) - row_max(shortest)  # [heads, q]
    applies &= jnp.all(jnp.where(keys < longest, gap, 0.0) < SHARED_SOFTMAX_RANGE)
  return applies


def _segment_slots_attention(scores: Array, value: Array,
                             segments: segment_slots.PackedSegments) -> Array:
  """Shared-score attention of each slot (segment) alone, repacked into rows.

  Works in `fused.mix_keys_minor`'s layout, `[heads, head_dim, batch, len]`: rows move to slots
  and back along the minor-most axis, and the only transposes are of the packed rows, once in
  and once out.
  """
  groups = segment_slots.slot_groups(value.shape[1], segments.num_slots)
  mixed = []
  for (first, count, capacity), group_value, group_valid in zip(
      groups, segment_slots.unpack(fused.to_keys_minor(value), segments, 3),
      segment_slots.unpack(segments.valid, segments)):
    # The slots of a group are `[batch, slots]` examples of one length, `capacity`.
    weights = fused.shared_weights(scores[:, :capacity, :capacity],
                                   jnp.max(segments.group_lengths(first, count)),
                                   segments.causal)
    mixed.append(fused.mix_keys_minor(weights, group_valid, group_value))
  return fused.to_keys_minor(segment_slots.repack(mixed, segments, 3))


# Only the inputs are kept for the backward pass, which recomputes the taken branch: a `cond`
# under autodiff would keep the residuals of both branches, the per-example path's
# `[batch, heads, len, len]` probabilities among them (as zeros when the slots are taken).
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _slots_or_per_example(per_example, scores, value, segments):
  return _slots_or_per_example_forward(per_example, scores, value, segments)[0]


def _slots_or_per_example_forward(per_example, scores, value, segments):
  use_slots = slots_apply(scores, segments)
  out = jax.lax.cond(use_slots, _segment_slots_attention, per_example, scores, value, segments)
  return out, (scores, value, segments, use_slots)


def _slots_or_per_example_backward(per_example, residuals, grad):
  scores, value, segments, use_slots = residuals

  def gradients(path):
    def branch(scores, value):
      _, pullback = jax.vjp(lambda s, v: path(s, v, segments), scores, value)
      return pullback(grad)
    return branch

  score_grad, value_grad = jax.lax.cond(
      use_slots, gradients(_segment_slots_attention), gradients(per_example), scores, value)
  return score_grad, value_grad, None


_slots_or_per_example.defvjp(_slots_or_per_example_forward, _slots_or_per_example_backward)
