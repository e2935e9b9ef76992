"""Packed rows laid out as slots, one segment each, so shared score maps stay shared when packed.

A random synthesizer reads its score map R at each token's position within its segment. On a
packed row (several examples one after another) the logits are therefore per example, and the
per-example softmax is what made packed random attention slower than vanilla. Moved to a slot,
a segment starts at local position 0 and looks exactly like an unpacked example, so the
batch-shared path (softmax of R once per step, `fused.shared_scores_attention`) applies slot by
slot.

Layout: the segments of a row, longest first, fill slots 0, 1, ..., `num_slots - 1`. The k-th
longest of segments that share L positions has at most L / (k + 1) tokens, so the slots come in
groups of equal capacity: group g holds slots 2^g - 1 ... 2^(g+1) - 2, each of ceil(L / 2^g)
positions (rounded up to a multiple of 8): one slot of L, two of L/2, four of L/4, ... Each group
holds about L positions and costs about L^2 / 2^g of attention work per row, whatever the split,
in one batched matmul per group: 15 slots (4 groups) cost 1.875 L^2 at L = 512 (2.1 L^2 at 114,
where rounding adds more). A batch with a row of more segments than slots does not fit
(`PackedSegments.fits`); callers then take the per-example path for the whole batch.

`unpack` and `repack` move rows between the two layouts. Each is a partial permutation of rows
and the other's transpose, so each one's gradient is the other (no scatter).
"""
import functools
import math

import flax
import jax
import jax.numpy as jnp

Array = jax.Array

_ALIGNMENT = 8


def slot_groups(length: int, num_slots: int) -> tuple[tuple[int, int, int], ...]:
  """`(first slot, number of slots, capacity)` of each group, for rows of `length`."""
  groups = []
  first = 0
  while first < num_slots:
    count = min(first + 1, num_slots - first)  # group g starts at slot 2^g - 1, has 2^g slots
    capacity = min(length, -(-math.ceil(length / (first + 1)) // _ALIGNMENT) * _ALIGNMENT)
    groups.append((first, count, capacity))
    first += count
  return tuple(groups)


def capacities(length: int, num_slots: int) -> tuple[int, ...]:
  """Positions of each slot: slot k holds at most length / (k + 1) tokens; see `slot_groups`."""
  return tuple(c for _, count, c in slot_groups(length, num_slots) for _ in range(count))


def runs(segment_ids: Array) -> tuple[Array, Array, Array]:
  """Runs of equal ids along each row of `[batch, len]` `segment_ids`.

  Returns `[batch, len]` arrays: whether each token starts a run (bool), the index of its run in
  the row (int32), and its position within the run (int32).
  """
  index = jnp.arange(segment_ids.shape[1])
  start = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
  run = jnp.cumsum(start, axis=1, dtype=jnp.int32) - 1
  position = index - jax.lax.cummax(jnp.where(start, index, 0), axis=1)
  return start, run, position


@flax.struct.dataclass
class PackedSegments:
  """Where each segment of a packed batch sits, and which slot it takes.

  Attributes:
    ordinal: `[batch, len]` int32, the index of each token's segment in its row (0, 1, ...), or
      -1 for a token outside every segment (trailing padding).
    valid: `[batch, len]` bool, the tokens that are not padding.
    position: `[batch, len]` int32, each token's position within its segment.
    slot: `[batch, len]` int32, the slot of each token's segment; `num_slots` outside slots.
    start: `[batch, num_slots]` int32, the row offset of each slot's segment.
    length: `[batch, num_slots]` int32, its length in tokens (0: an empty slot).
    fits: `[]` bool, every row's segments fit in the slots (else the segments past the slots
      of a row have none: `slot` is `num_slots` for them).
    causal: the attention these segments mask is causal (decoder self-attention).
  """
  ordinal: Array
  valid: Array
  position: Array
  slot: Array
  start: Array
  length: Array
  fits: Array
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  @property
  def num_slots(self) -> int:
    return self.start.shape[1]

  @classmethod
  def from_segment_ids(cls, segment_ids: Array, valid: Array, num_slots: int,
                       causal: bool = False) -> 'PackedSegments':
    """Segments of seqio's packed layout.

    Args:
      segment_ids: `[batch, len]`; a segment is a run of equal ids (seqio numbers the examples
        of a row 1, 2, ...; a dense mask built by id equality joins runs of one id that are
        apart, which seqio never produces).
      valid: `[batch, len]` bool, the tokens that are not padding (token id > 0). A run without
        any valid token (the row's trailing padding) is no segment.
      num_slots: slots per row.
      causal: see the attribute.
    """
    length = segment_ids.shape[1]
    valid = valid.astype(bool)
    index = jnp.arange(length)
    run_start, run, position = runs(segment_ids)
    # A token's run is a segment if a valid token of the same run lies at or before it, or at or
    # after it (running max / min along the row; no scatter, so each row stays on its device).
    valid_run = lambda fill: jnp.where(valid, run, fill)
    is_segment = ((jax.lax.cummax(valid_run(-1), axis=1) == run)
                  | (jax.lax.cummin(valid_run(length), axis=1, reverse=True) == run))
    ordinal = jnp.where(
        is_segment, jnp.cumsum(run_start & is_segment, axis=1, dtype=jnp.int32) - 1, -1)
    fits = jnp.all(ordinal < num_slots)

    one_hot = ordinal[:, :, None] == jnp.arange(num_slots)  # [b, len, K]
    sizes = jnp.sum(one_hot, axis=1, dtype=jnp.int32)  # [b, K] by ordinal
    starts = jnp.min(jnp.where(one_hot, index[None, :, None], length), axis=1)
    # Slot of each ordinal: its rank by length, longest first, ties in row order.
    longer = sizes[:, None, :] > sizes[:, :, None]  # [b, k, j]: segment j longer than k
    tied_before = (sizes[:, None, :] == sizes[:, :, None]) & (
        jnp.arange(num_slots)[None, :] < jnp.arange(num_slots)[:, None])
    rank = jnp.sum(longer | tied_before, axis=2, dtype=jnp.int32)  # [b, K]
    to_slot = rank[:, :, None] == jnp.arange(num_slots)  # [b, ordinal, slot]
    slot_start = jnp.sum(jnp.where(to_slot, starts[:, :, None], 0), axis=1)
    slot_length = jnp.sum(jnp.where(to_slot, sizes[:, :, None], 0), axis=1)
    in_slots = (ordinal >= 0) & (ordinal < num_slots)
    slot = jnp.where(in_slots, jnp.take_along_axis(
        rank, jnp.clip(ordinal, 0, num_slots - 1), axis=1), num_slots)
    return cls(ordinal, valid, position, slot, slot_start, slot_length, fits, causal)

  def mask(self) -> Array:
    """The dense mask `[batch, 1, len, len]` (bool): valid tokens of one segment (and causal)."""
    same = ((self.ordinal[:, :, None] == self.ordinal[:, None, :])
            & self.valid[:, :, None] & self.valid[:, None, :])
    if self.causal:
      same = same & jnp.tril(jnp.ones(same.shape[1:], bool))
    return same[:, None]

  def group_lengths(self, first: int, count: int) -> Array:
    """`[batch, count]` segment lengths of the slots of one group."""
    return self.length[:, first:first + count]


def _at(x: Array, ndim: int, axis: int) -> Array:
  """`[batch, n, ...]` -> rank `ndim`: its axes from `axis - 1` on, ones elsewhere."""
  shape = [1] * ndim
  shape[axis - 1:axis - 1 + x.ndim] = x.shape
  return x.reshape(shape)


def _check_axis(axis: int, ndim: int):
  if not 1 <= axis < ndim:
    raise ValueError(f'segment_slots: axis={axis} must name the row axis of a rank-{ndim} array, '
                     f'after its batch axis: 1 <= axis < {ndim}.')


def _gather_slots(rows: Array, segments: PackedSegments, axis: int) -> list[Array]:
  _check_axis(axis, rows.ndim)
  batch, length = rows.shape[axis - 1:axis + 1]
  out = []
  for first, count, capacity in slot_groups(length, segments.num_slots):
    t = jnp.arange(capacity)
    used = t < segments.group_lengths(first, count)[:, :, None]  # [b, count, capacity]
    index = jnp.where(used, segments.start[:, first:first + count, None] + t, 0)
    gathered = jnp.take_along_axis(rows, _at(index.reshape(batch, -1), rows.ndim, axis), axis)
    gathered = gathered.reshape(rows.shape[:axis] + (count, capacity) + rows.shape[axis + 1:])
    out.append(jnp.where(_at(used, gathered.ndim, axis), gathered, jnp.zeros((), gathered.dtype)))
  return out


def _scatter_slots(groups: list[Array], segments: PackedSegments, axis: int) -> Array:
  _check_axis(axis, groups[0].ndim - 1)
  batch, length = segments.slot.shape
  offsets, offset = [], 0  # where each slot starts in the groups laid end to end
  for _, count, capacity in slot_groups(length, segments.num_slots):
    offsets += [offset + i * capacity for i in range(count)]
    offset += count * capacity
  flat = jnp.concatenate(
      [g.reshape(g.shape[:axis] + (-1,) + g.shape[axis + 2:]) for g in groups], axis=axis)
  inside = segments.slot < segments.num_slots
  base = jnp.asarray(offsets, jnp.int32)[jnp.minimum(segments.slot, segments.num_slots - 1)]
  index = jnp.where(inside, base + segments.position, 0)
  rows = jnp.take_along_axis(flat, _at(index, flat.ndim, axis), axis)
  return jnp.where(_at(inside, rows.ndim, axis), rows, jnp.zeros((), rows.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def unpack(rows: Array, segments: PackedSegments, axis: int = 1) -> list[Array]:
  """Rows -> slot groups, zero past each segment.

  Args:
    rows: `[..., batch, len, ...]`, the row axis at `axis` and the batch axis just before it.
    segments: the packing of the rows.
    axis: the row axis. The matmuls that mix along the row want it minor-most, after the batch
      (`packed_shared_scores`); plain `[batch, len, ...]` arrays take the default.

  Returns:
    Per slot group, `[..., batch, slots, capacity, ...]`.
  """
  return _gather_slots(rows, segments, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def repack(groups: list[Array], segments: PackedSegments, axis: int = 1) -> Array:
  """The inverse layout change: slot groups -> `[..., batch, len, ...]`; zero outside segments."""
  return _scatter_slots(groups, segments, axis)


unpack.defvjp(lambda rows, segments, axis: (unpack(rows, segments, axis), segments),
              lambda axis, segments, grads: (repack(grads, segments, axis), None))
repack.defvjp(lambda groups, segments, axis: (repack(groups, segments, axis), segments),
              lambda axis, segments, grad: (unpack(grad, segments, axis), None))
