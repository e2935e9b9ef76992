"""Segment slots: capacities, the slot layout of packed rows, and unpack/repack as adjoints."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import segment_slots
from synth_jax.attention.segment_slots import PackedSegments, capacities, repack, unpack

# Jitted, and few shapes: compiling op by op for many shapes would make the file slow. The
# hand-made rows also run eagerly (test_hand_rows_slots_are_longest_first_with_ties_in_row_order).
segments_of = jax.jit(PackedSegments.from_segment_ids, static_argnums=(2, 3))
unpack_jit = jax.jit(unpack)
repack_jit = jax.jit(repack)

BATCH = 8
CASES = [(16, 4), (37, 7), (64, 15)]  # (row length, slots)
K = 4  # slots in the hand-made batch; capacities(16, 4) == (16, 8, 8, 8)

# seqio layout: ids 1, 2, 3, ... then trailing 0 padding (token invalid).
HAND_IDS = np.array([[1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 0, 0, 0, 0, 0, 0],   # lengths 3, 5, 2
                     [1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 0, 0, 0],   # padding inside seg 2
                     [1] * 16,                                           # one segment
                     [0] * 16,                                           # all padding
                     [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 0, 0, 0],   # ties: 3, 3, 4, 3
                     [1, 1, 0, 0, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # a padding run between
                     [1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],   # 4 of 1 token: K of K
                     [1] * 12 + [0] * 4])                                # first token invalid
HAND_VALID = HAND_IDS > 0
HAND_VALID[1, 5] = False  # an invalid token inside segment 2 (same id): still part of it
HAND_VALID[1, 10] = False  # ... and one at the start of segment 3
HAND_VALID[7, 0] = False


def reference(segment_ids, valid, num_slots):
  """Plain Python: runs of equal ids holding a valid token, longest first (ties in row order)."""
  batch, length = segment_ids.shape
  ordinal = np.full((batch, length), -1)
  position = np.zeros((batch, length), int)
  slot = np.full((batch, length), num_slots)
  start = np.zeros((batch, num_slots), int)
  size = np.zeros((batch, num_slots), int)
  fits = True
  for b in range(batch):
    runs, t = [], 0
    while t < length:
      end = t
      while end < length and segment_ids[b, end] == segment_ids[b, t]:
        end += 1
      if valid[b, t:end].any():
        runs.append((t, end))
      t = end
    fits &= len(runs) <= num_slots
    for i, (lo, hi) in enumerate(runs):
      ordinal[b, lo:hi] = i
    order = sorted(range(len(runs)), key=lambda i: (-(runs[i][1] - runs[i][0]), i))
    for s, i in enumerate(order[:num_slots]):
      lo, hi = runs[i]
      start[b, s], size[b, s] = lo, hi - lo
      slot[b, lo:hi] = s
      position[b, lo:hi] = np.arange(hi - lo)
  return dict(ordinal=ordinal, slot=slot, position=position, start=start, length=size,
              fits=fits)


def reference_unpack(x, ref, num_slots):
  """Per slot `[batch, capacity_k, ...]`: the segment's rows at 0..n-1, zero after."""
  out = []
  for s, cap in enumerate(capacities(x.shape[1], num_slots)):
    y = np.zeros((x.shape[0], cap) + x.shape[2:], x.dtype)
    for b in range(x.shape[0]):
      n, lo = ref['length'][b, s], ref['start'][b, s]
      y[b, :n] = x[b, lo:lo + n]
    out.append(y)
  return out


def reference_repack(slots, ref):
  batch, length = ref['slot'].shape
  out = np.zeros((batch, length) + slots[0].shape[2:], slots[0].dtype)
  for b, t in itertools.product(range(batch), range(length)):
    if ref['slot'][b, t] < len(slots):
      out[b, t] = slots[ref['slot'][b, t]][b, ref['position'][b, t]]
  return out


def per_slot(groups):
  """unpack's groups `[batch, count, capacity, ...]` -> one `[batch, capacity, ...]` per slot."""
  return [np.asarray(g[:, i]) for g in groups for i in range(g.shape[1])]


def to_groups(slots, length, num_slots):
  groups = []
  for first, count, _ in segment_slots.slot_groups(length, num_slots):
    groups.append(jnp.stack([jnp.asarray(s) for s in slots[first:first + count]], axis=1))
  return groups


def random_rows(seed, batch, length, max_segments, interior_padding=0.15):
  """seqio-style rows: 1..n segments of random lengths, invalid tokens inside, trailing 0s."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((batch, length), np.int32)
  valid = np.zeros((batch, length), bool)
  for b in range(batch):
    n = int(rng.integers(1, max_segments + 1))
    used = int(rng.integers(n, length + 1))
    cuts = np.sort(rng.choice(np.arange(1, used), n - 1, replace=False)) if n > 1 else []
    bounds = [0, *cuts, used]
    for i in range(n):
      lo, hi = bounds[i], bounds[i + 1]
      ids[b, lo:hi] = i + 1
      valid[b, lo:hi] = rng.random(hi - lo) > interior_padding
      valid[b, rng.integers(lo, hi)] = True  # a segment holds at least one valid token
  return ids, valid


def integer_partitions(n, largest=None):
  largest = n if largest is None else largest
  if n == 0:
    yield ()
    return
  for first in range(min(n, largest), 0, -1):
    for rest in integer_partitions(n - first, first):
      yield (first,) + rest


def want_mask(ids, valid, causal):
  """Same segment id, both tokens valid (and causal)."""
  want = (ids[:, :, None] == ids[:, None, :]) & valid[:, :, None] & valid[:, None, :]
  if causal:
    want &= np.tril(np.ones(want.shape[1:], bool))
  return want[:, None]


def assert_matches_reference(segments, ref):
  np.testing.assert_array_equal(segments.ordinal, ref['ordinal'])
  np.testing.assert_array_equal(segments.slot, ref['slot'])
  np.testing.assert_array_equal(segments.length, ref['length'])
  inside = ref['slot'] < segments.num_slots
  np.testing.assert_array_equal(np.where(inside, segments.position, 0), ref['position'])
  used = ref['length'] > 0  # an empty slot's start is unspecified
  np.testing.assert_array_equal(np.where(used, segments.start, 0), ref['start'])


# ----------------------------------------------------------------------------- capacities


def test_capacities_hand_values_are_halving_groups_rounded_to_8():
  assert capacities(512, 15) == (512,) + (256,) * 2 + (128,) * 4 + (64,) * 8
  assert capacities(114, 7) == (114,) + (64,) * 2 + (32,) * 4  # 57 -> 64, 28.5 -> 32
  assert capacities(16, K) == (16, 8, 8, 8)
  assert capacities(5, 3) == (5, 5, 5)  # capped at the row length


@pytest.mark.parametrize('length', [1, 5, 8, 13, 64, 114, 512, 1000])
def test_capacities_are_multiples_of_8_or_the_length_and_never_grow(length):
  caps = capacities(length, 15)
  assert len(caps) == 15
  assert all(c % 8 == 0 or c == length for c in caps)
  assert all(c <= length for c in caps)
  assert list(caps) == sorted(caps, reverse=True)


def test_capacities_hold_the_kth_longest_segment_of_every_split_of_small_rows():
  for length in range(1, 25):  # exhaustive: every partition of every row length up to 24
    caps = capacities(length, 15)
    for parts in integer_partitions(length):  # already sorted descending
      for k, size in enumerate(parts[:15]):
        assert size <= caps[k], (length, parts, k)


def test_capacities_hold_the_kth_longest_segment_of_random_and_equal_splits():
  rng = np.random.default_rng(0)
  for length in [37, 100, 114, 255, 512, 777, 2048]:
    caps = capacities(length, 15)
    splits = [[length // n] * n for n in range(1, 17)]  # the tight case: n equal segments
    for _ in range(300):
      n = int(rng.integers(1, 20))
      cuts = np.sort(rng.choice(np.arange(1, length), min(n, length) - 1, replace=False))
      splits.append(np.diff([0, *cuts, length]))
    for sizes in splits:
      for k, size in enumerate(sorted(sizes, reverse=True)[:15]):
        assert size <= caps[k], (length, k, size)


# ----------------------------------------------------------------------------- layout


def test_hand_rows_slots_are_longest_first_with_ties_in_row_order():
  segments = PackedSegments.from_segment_ids(jnp.asarray(HAND_IDS), jnp.asarray(HAND_VALID), K)
  # Row 0: lengths 3, 5, 2 -> slot 0 the 5 at 3, slot 1 the 3 at 0, slot 2 the 2 at 8.
  np.testing.assert_array_equal(segments.length[0], [5, 3, 2, 0])
  np.testing.assert_array_equal(segments.start[0, :3], [3, 0, 8])
  np.testing.assert_array_equal(segments.slot[0], [1] * 3 + [0] * 5 + [2] * 2 + [K] * 6)
  np.testing.assert_array_equal(segments.position[0, :10], [0, 1, 2, 0, 1, 2, 3, 4, 0, 1])
  # Row 1: the invalid tokens at 5 and 10 still belong to their segments (lengths 4, 6, 3).
  np.testing.assert_array_equal(segments.length[1], [6, 4, 3, 0])
  np.testing.assert_array_equal(segments.slot[1, [5, 10]], [0, 2])
  np.testing.assert_array_equal(segments.position[1, [5, 10]], [1, 0])
  # Row 2: one segment fills slot 0; row 3 (all padding) has none.
  np.testing.assert_array_equal(segments.length[2], [16, 0, 0, 0])
  np.testing.assert_array_equal(segments.position[2], np.arange(16))
  np.testing.assert_array_equal(segments.length[3], [0, 0, 0, 0])
  np.testing.assert_array_equal(segments.slot[3], [K] * 16)
  np.testing.assert_array_equal(segments.ordinal[3], [-1] * 16)
  # Row 4: lengths 3, 3, 4, 3 -> the 4 first, then the 3s in row order.
  np.testing.assert_array_equal(segments.length[4], [4, 3, 3, 3])
  np.testing.assert_array_equal(segments.start[4], [6, 0, 3, 10])
  # Row 5: the padding run between segments is no segment.
  np.testing.assert_array_equal(segments.ordinal[5, :7], [0, 0, -1, -1, 1, 1, 1])
  np.testing.assert_array_equal(segments.slot[5, :7], [1, 1, K, K, 0, 0, 0])
  # Row 6: four 1-token segments tie: slots in row order, then trailing padding.
  np.testing.assert_array_equal(segments.slot[6], [0, 1, 2, 3] + [K] * 12)
  np.testing.assert_array_equal(segments.start[6], [0, 1, 2, 3])
  # Row 7: an invalid first token is still the segment's start.
  np.testing.assert_array_equal(segments.start[7, 0], 0)
  np.testing.assert_array_equal(segments.length[7], [12, 0, 0, 0])
  assert bool(segments.fits)


def test_hand_rows_equal_the_reference():
  segments = segments_of(jnp.asarray(HAND_IDS), jnp.asarray(HAND_VALID), K)
  assert_matches_reference(segments, reference(HAND_IDS, HAND_VALID, K))


@pytest.mark.parametrize('length,num_slots', CASES)
def test_random_rows_equal_the_reference(length, num_slots):
  for seed in range(6):
    ids, valid = random_rows(seed, BATCH, length, max_segments=num_slots)
    ref = reference(ids, valid, num_slots)
    assert ref['fits']
    segments = segments_of(jnp.asarray(ids), jnp.asarray(valid), num_slots)
    assert_matches_reference(segments, ref)
    assert bool(segments.fits)
    # Every segment fits its slot's capacity.
    assert np.all(np.asarray(segments.length) <= np.array(capacities(length, num_slots)))


def test_random_rows_with_many_ties_equal_the_reference():
  # Segments of only 1 or 2 tokens: lengths tie almost everywhere.
  length, num_slots = CASES[1]
  rng = np.random.default_rng(7)
  for _ in range(4):
    ids = np.zeros((BATCH, length), np.int32)
    for b in range(BATCH):
      sizes = rng.integers(1, 3, size=int(rng.integers(1, num_slots + 1)))
      ids[b, :sizes.sum()] = np.repeat(np.arange(1, len(sizes) + 1), sizes)
    valid = ids > 0
    segments = segments_of(jnp.asarray(ids), jnp.asarray(valid), num_slots)
    assert_matches_reference(segments, reference(ids, valid, num_slots))


def test_fits_is_false_when_one_row_has_more_segments_than_slots():
  ids = HAND_IDS.copy()
  ids[7] = [1, 2, 3, 4, 5] + [0] * 11  # 5 segments in 4 slots
  segments = segments_of(jnp.asarray(ids), jnp.asarray(ids > 0), K)
  assert not bool(segments.fits)
  assert not reference(ids, ids > 0, K)['fits']
  np.testing.assert_array_equal(segments.ordinal[7], [0, 1, 2, 3, 4] + [-1] * 11)
  # The callers' fallback still gets the right dense mask.
  np.testing.assert_array_equal(segments.mask(), want_mask(ids, ids > 0, False))
  # HAND_IDS row 6 has exactly K segments and trailing padding: the padding is no segment.
  assert bool(segments_of(jnp.asarray(HAND_IDS), jnp.asarray(HAND_VALID), K).fits)


def test_a_repeated_id_after_another_is_a_new_segment():
  ids = HAND_IDS.copy()
  ids[0] = [1, 1, 2, 2, 2, 1] + [0] * 10  # a segment is a run of equal ids
  segments = segments_of(jnp.asarray(ids), jnp.asarray(ids > 0), K)
  np.testing.assert_array_equal(segments.ordinal[0], [0, 0, 1, 1, 1, 2] + [-1] * 10)
  np.testing.assert_array_equal(segments.length[0], [3, 2, 1, 0])
  np.testing.assert_array_equal(segments.position[0, :6], [0, 1, 0, 1, 2, 0])


# ----------------------------------------------------------------------------- mask


@pytest.mark.parametrize('causal', [False, True])
def test_mask_is_same_segment_id_and_both_valid(causal):
  length, num_slots = CASES[1]
  ids, valid = random_rows(4, BATCH, length, max_segments=num_slots)
  segments = segments_of(jnp.asarray(ids), jnp.asarray(valid), num_slots, causal)
  mask = segments.mask()
  assert mask.dtype == jnp.bool_
  np.testing.assert_array_equal(mask, want_mask(ids, valid, causal))


@pytest.mark.parametrize('causal', [False, True])
def test_hand_mask_is_same_segment_id_and_both_valid(causal):
  segments = segments_of(jnp.asarray(HAND_IDS), jnp.asarray(HAND_VALID), K, causal)
  mask = np.asarray(segments.mask())
  np.testing.assert_array_equal(mask, want_mask(HAND_IDS, HAND_VALID, causal))
  assert not mask[3].any()  # the all-padding row attends nowhere
  assert not mask[1, 0, 5].any() and not mask[1, 0, :, 5].any()  # nor the padding inside


# ----------------------------------------------------------------------------- unpack/repack


def test_unpack_puts_each_segment_at_the_start_of_its_slot_and_zeros_after():
  x = np.arange(1, BATCH * 16 + 1, dtype=np.float32).reshape(BATCH, 16)
  segments = segments_of(jnp.asarray(HAND_IDS), jnp.asarray(HAND_VALID), K)
  slots = per_slot(unpack(jnp.asarray(x), segments))  # eager
  assert [s.shape for s in slots] == [(BATCH, c) for c in capacities(16, K)]
  # Row 0: slot 0 holds tokens 3..7, slot 1 tokens 0..2, slot 2 tokens 8..9, slot 3 nothing.
  np.testing.assert_array_equal(slots[0][0], np.r_[x[0, 3:8], np.zeros(11)])
  np.testing.assert_array_equal(slots[1][0], np.r_[x[0, 0:3], np.zeros(5)])
  np.testing.assert_array_equal(slots[2][0], np.r_[x[0, 8:10], np.zeros(6)])
  np.testing.assert_array_equal(slots[3][0], np.zeros(8))
  np.testing.assert_array_equal(slots[0][2], x[2])  # the whole-row segment
  for s in slots:
    np.testing.assert_array_equal(s[3], 0)  # the all-padding row
  want = reference_unpack(x, reference(HAND_IDS, HAND_VALID, K), K)
  for got, w in zip(slots, want):
    np.testing.assert_array_equal(got, w)
  # Eager repack: back to the row, zero on the tokens outside segments.
  inside = reference(HAND_IDS, HAND_VALID, K)['slot'] < K
  np.testing.assert_array_equal(repack(unpack(jnp.asarray(x), segments), segments),
                                np.where(inside, x, 0))


@pytest.mark.parametrize('length,num_slots', CASES)
def test_repack_of_unpack_is_the_identity_inside_segments_and_zero_outside(length, num_slots):
  for seed in range(3):
    ids, valid = random_rows(seed, BATCH, length, max_segments=num_slots)
    ref = reference(ids, valid, num_slots)
    segments = segments_of(jnp.asarray(ids), jnp.asarray(valid), num_slots)
    x = np.random.default_rng(seed).normal(size=(BATCH, length, 3)).astype(np.float32)
    groups = unpack_jit(jnp.asarray(x), segments)
    for got, want in zip(per_slot(groups), reference_unpack(x, ref, num_slots)):
      np.testing.assert_array_equal(got, want)
    inside = (ref['slot'] < num_slots)[..., None]
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(repack_jit(groups, segments), np.where(inside, x, 0))
    # repack alone on arbitrary slot contents: reads each token's slot at its position.
    ys = [np.random.default_rng(seed + 1).normal(size=s.shape).astype(np.float32)
          for s in per_slot(groups)]
    np.testing.assert_array_equal(repack_jit(to_groups(ys, length, num_slots), segments),
                                  reference_repack(ys, ref))


def test_unpack_and_repack_along_a_later_axis_equal_moving_the_axes():
  """`axis=3` on `[h, d, batch, len]` (the keys-minor layout) moves the same rows as axis 1."""
  length, num_slots = CASES[1]
  ids, valid = random_rows(4, BATCH, length, max_segments=num_slots)
  segments = segments_of(jnp.asarray(ids), jnp.asarray(valid), num_slots)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, BATCH, length)), jnp.float32)
  rows_first = jnp.moveaxis(x, (2, 3), (0, 1))  # [batch, len, h, d]
  minor = jax.jit(unpack, static_argnums=2)(x, segments, 3)
  for got, want in zip(minor, unpack_jit(rows_first, segments)):
    np.testing.assert_array_equal(got, jnp.moveaxis(want, (0, 1, 2), (2, 3, 4)))
  back = jax.jit(repack, static_argnums=2)(minor, segments, 3)
  np.testing.assert_array_equal(jnp.moveaxis(back, (2, 3), (0, 1)),
                                repack_jit(unpack_jit(rows_first, segments), segments))
  # Each one's gradient is still the other along the later axis, as plain autodiff of the
  # gathers gives it.
  (grad,) = jax.vjp(lambda r: unpack(r, segments, 3), x)[1](minor)
  (naive,) = jax.vjp(lambda r: segment_slots._gather_slots(r, segments, 3), x)[1](minor)
  np.testing.assert_array_equal(grad, back)
  np.testing.assert_allclose(grad, naive, rtol=1e-6)
  (grads,) = jax.vjp(lambda g: repack(g, segments, 3), minor)[1](x)
  (naives,) = jax.vjp(lambda g: segment_slots._scatter_slots(g, segments, 3), minor)[1](x)
  for g, n, w in zip(grads, naives, jax.jit(unpack, static_argnums=2)(x, segments, 3)):
    np.testing.assert_array_equal(g, w)
    np.testing.assert_allclose(g, n, rtol=1e-6)


def test_a_row_axis_without_a_batch_axis_before_it_is_a_clear_error():
  segments = segments_of(jnp.asarray(HAND_IDS), jnp.asarray(HAND_VALID), K)
  x = jnp.zeros((BATCH, 16))
  for axis in (0, 2):
    with pytest.raises(ValueError, match=rf'axis={axis} must name the row axis.*1 <= axis < 2'):
      unpack(x, segments, axis)
  with pytest.raises(ValueError, match=r'axis=0 must name the row axis'):
    repack(unpack(x, segments), segments, 0)


def random_case(seed, trailing=(3,)):
  length, num_slots = CASES[1]
  ids, valid = random_rows(seed, BATCH, length, max_segments=num_slots)
  segments = segments_of(jnp.asarray(ids), jnp.asarray(valid), num_slots)
  k1, k2 = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(k1, (BATCH, length) + trailing)
  y = [jax.random.normal(k, (BATCH, count, cap) + trailing) for k, (_, count, cap) in zip(
      jax.random.split(k2, 8), segment_slots.slot_groups(length, num_slots))]
  return segments, x, y


def dot(a, b):
  return sum(jnp.sum(u * v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def unpack_loss(x, y, segments):
  return dot(unpack(x, segments), y)


def repack_loss(y, x, segments):
  return dot(repack(y, segments), x)


# Jitted gradients; the segments are a pytree argument.
grad_unpack = jax.jit(jax.grad(unpack_loss))
grad_repack = jax.jit(jax.grad(repack_loss))


def test_unpack_and_repack_are_adjoint():
  inner = jax.jit(lambda x, y, s: (unpack_loss(x, y, s), repack_loss(y, x, s)))
  for seed in range(4):
    segments, x, y = random_case(seed)
    lhs, rhs = inner(x, y, segments)
    assert abs(float(lhs)) > 1e-3  # not trivially 0 = 0
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)


def test_gradient_of_unpack_is_repack_of_the_cotangent_and_equals_autodiff():
  segments, x, y = random_case(3)
  (got,) = jax.vjp(lambda r: unpack(r, segments), x)[1](y)
  np.testing.assert_array_equal(got, repack_jit(y, segments))
  grad = grad_unpack(x, y, segments)
  np.testing.assert_array_equal(grad, repack_jit(y, segments))
  # The true derivative of the gather (plain autodiff, through a scatter) agrees.
  naive = jax.jit(jax.grad(lambda r, s: dot(segment_slots._gather_slots(r, s, 1), y)))(x, segments)
  np.testing.assert_allclose(grad, naive, rtol=1e-6, atol=1e-6)


def test_gradient_of_repack_is_unpack_of_the_cotangent_and_equals_autodiff():
  segments, x, y = random_case(4)
  (got,) = jax.vjp(lambda s: repack(s, segments), y)[1](x)
  for g, w in zip(got, unpack_jit(x, segments)):
    np.testing.assert_array_equal(g, w)
  grad = grad_repack(y, x, segments)
  naive = jax.jit(jax.grad(lambda t, s: dot(segment_slots._scatter_slots(t, s, 1), x)))(y, segments)
  for g, n, w in zip(grad, naive, unpack_jit(x, segments)):
    np.testing.assert_array_equal(g, w)
    np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-6)


def test_gradients_have_no_scatter():
  segments, x, y = random_case(5)
  assert 'scatter' not in str(jax.make_jaxpr(jax.grad(unpack_loss))(x, y, segments))
  assert 'scatter' not in str(jax.make_jaxpr(jax.grad(repack_loss))(y, x, segments))
  naive = jax.make_jaxpr(jax.grad(lambda r: dot(segment_slots._gather_slots(r, segments, 1), y)))(x)
  assert 'scatter' in str(naive)  # what the custom rule replaces


def test_gradient_of_repack_norm_is_unpack_of_repack():
  # d/dy |repack(y)|^2 / 2 = unpack(repack(y)): the backward of repack is unpack.
  segments, _, y = random_case(6)
  grad = jax.jit(jax.grad(lambda t, s: 0.5 * dot(repack(t, s), repack(t, s))))(y, segments)
  for g, w in zip(grad, unpack_jit(repack_jit(y, segments), segments)):
    np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- jit


def test_jit_with_heads_and_head_dim_equals_the_reference():
  length, num_slots = CASES[1]
  ids, valid = random_rows(8, BATCH, length, max_segments=num_slots)
  ref = reference(ids, valid, num_slots)
  x = np.random.default_rng(8).normal(size=(BATCH, length, 2, 4)).astype(np.float32)

  @jax.jit
  def round_trip(ids, valid, x):
    segments = PackedSegments.from_segment_ids(ids, valid, num_slots, causal=True)
    groups = unpack(x, segments)
    return groups, repack(groups, segments), segments

  groups, back, segments = round_trip(jnp.asarray(ids), jnp.asarray(valid), jnp.asarray(x))
  assert segments.causal
  assert_matches_reference(segments, ref)
  assert [g.shape for g in groups] == [(BATCH, count, cap, 2, 4) for _, count, cap in
                                       segment_slots.slot_groups(length, num_slots)]
  for got, want in zip(per_slot(groups), reference_unpack(x, ref, num_slots)):
    np.testing.assert_array_equal(got, want)
  inside = (ref['slot'] < num_slots)[..., None, None]
  np.testing.assert_array_equal(back, np.where(inside, x, 0))
  # The gradient under jit, through [b, L, heads, head_dim] too: ones inside segments.
  cotangent = [jnp.ones_like(g) for g in groups]
  grad = grad_unpack(jnp.asarray(x), cotangent, segments)
  np.testing.assert_array_equal(grad, np.broadcast_to(inside, x.shape).astype(np.float32))
