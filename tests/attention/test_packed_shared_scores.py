"""Packed rows: batch-shared logits per segment, in slots or per example, equal each segment alone."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import core
from synth_jax.attention import packed_shared_scores
from synth_jax.attention import segment_slots
from tests.attention import helpers

HEADS, HEAD_DIM = 2, 8

# Segment ids of packed rows (seqio layout, 0 = trailing padding) and their valid tokens: a row of
# three segments with one padding token inside the first, one segment filling the row, four
# segments with a tie in length, and a row of padding only.
PACKED_IDS = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0],
                       [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                       [1, 1, 2, 2, 3, 3, 3, 4, 0, 0],
                       [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
PACKED_VALID = (PACKED_IDS > 0) & ~((np.arange(10) == 2)[None] & (PACKED_IDS == 1))


def random_inputs(seed, batch, length):
  """Logits `[1, h, L, L]`, a T5-like bias that depends on j - i only, values `[b, L, h, d]`."""
  keys = jax.random.split(jax.random.key(seed), 2)
  logits = 2.0 * jax.random.normal(keys[0], (1, HEADS, length, length))
  distance = jnp.abs(jnp.arange(length)[:, None] - jnp.arange(length)[None, :])
  bias = jnp.stack([0.3 * distance, -0.2 * distance])[None]
  value = jax.random.normal(keys[1], (batch, length, HEADS, HEAD_DIM))
  return logits, bias, value


def each_segment_alone(ids, valid, logits, bias, value, causal):
  """Every segment as an unpacked example of its own, through the core: the packed reference."""
  rows = []
  for row_ids, row_valid, row_value in zip(ids, valid, value):
    out = jnp.zeros_like(row_value)
    for segment in set(row_ids[row_valid].tolist()):
      where = np.flatnonzero(row_ids == segment)
      start, n = where[0], len(where)
      tokens = jnp.asarray(row_valid[start:start + n])[None]
      mask = core.make_attention_mask(tokens, tokens)
      if causal:
        mask = core.combine_masks(mask, core.make_causal_mask(tokens))
      probabilities = core.normalize(logits[..., :n, :n], mask,
                                     None if bias is None else bias[..., :n, :n])
      alone = core.mix(probabilities, row_value[None, start:start + n])[0]
      out = out.at[start:start + n].set(jnp.where(tokens[0][:, None, None], alone, 0))
    rows.append(out)
  return jnp.stack(rows)


def packed_attention(ids, valid, num_slots, causal):
  """Attention over packed `ids`, zero at padding, and its `PackedSegments`."""
  segments = segment_slots.PackedSegments.from_segment_ids(
      jnp.asarray(ids), jnp.asarray(valid), num_slots, causal)

  def attend(logits, bias, value):
    out = packed_shared_scores.packed_shared_scores_attention(
        logits, bias, segments, value, core.packed_per_example_attention)
    return jnp.where(jnp.asarray(valid)[:, :, None, None], out, 0)
  return attend, segments


def assert_equals_each_segment_alone(ids, valid, num_slots, causal, seed):
  logits, bias, value = random_inputs(seed, *ids.shape)
  attend, segments = packed_attention(ids, valid, num_slots, causal)
  reference = lambda *a: each_segment_alone(ids, valid, *a, causal=causal)
  np.testing.assert_allclose(attend(logits, bias, value), reference(logits, bias, value),
                             rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(seed + 1), value.shape)
  grads = [jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2)))(
      logits, bias, value) for f in (attend, reference)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  return segments


@pytest.mark.parametrize('causal', [False, True])
@pytest.mark.parametrize('num_slots', [15, 4, 3])  # 3: row 2 has 4 segments, the batch does not fit
def test_packed_shared_scores_attention_equals_each_segment_alone(num_slots, causal):
  segments = assert_equals_each_segment_alone(PACKED_IDS, PACKED_VALID, num_slots, causal, 20)
  assert bool(segments.fits) == (num_slots >= 4)


def rows_of(*lengths_per_row, length):
  """Segment ids of rows packed with segments of the given lengths, then padding."""
  ids = np.zeros((len(lengths_per_row), length), np.int32)
  for row, lengths in zip(ids, lengths_per_row):
    row[:sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
  return ids


@pytest.mark.parametrize('causal', [False, True])
def test_segments_as_long_as_their_slots_hold_equal_each_segment_alone(causal):
  """Rows of 64 split at the capacity bounds: 2 x 32, 4 x 16, 8 x 8, 15 segments, near misses."""
  ids = rows_of([32, 32], [16] * 4, [8] * 8, [33, 31], [20, 16, 16, 12], [1] * 14 + [50],
                [64], [9] * 7 + [1], length=64)
  assert segment_slots.capacities(64, 15) == (64, 32, 32, 16, 16, 16, 16) + (8,) * 8
  segments = assert_equals_each_segment_alone(ids, ids > 0, 15, causal, 30)
  assert bool(segments.fits) and bool(packed_shared_scores.slots_apply(
      random_inputs(30, *ids.shape)[0][0], segments))


def test_segments_whose_keys_would_underflow_the_shared_softmax_take_the_per_example_path():
  """A short segment whose keys score far below a longer one's, in the same slot group."""
  ids = rows_of([8], [4], length=8)
  _, bias, value = random_inputs(31, *ids.shape)
  attend, segments = packed_attention(ids, ids > 0, 15, causal=False)
  for gap, shared in ((50.0, True), (95.0, False)):
    logits = jnp.zeros((1, HEADS, 8, 8)).at[..., 4:].set(gap)
    assert bool(packed_shared_scores.slots_apply(logits[0], segments)) == shared
    want = each_segment_alone(ids, ids > 0, logits, None, value, causal=False)
    np.testing.assert_allclose(attend(logits, None, value), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want[1, :4], jnp.mean(value[1, :4], axis=0)[None].repeat(4, 0),
                               rtol=1e-5)  # equal scores within the segment: the mean value
  causal = packed_attention(ids, ids > 0, 15, causal=True)[1]
  assert bool(packed_shared_scores.slots_apply(logits[0], causal))  # only own keys: always safe


def gradient_conds(seed):
  """The `cond`s of the gradient of packed attention over `PACKED_IDS`, and the values."""
  logits, bias, value = random_inputs(seed, *PACKED_IDS.shape)
  attend, _ = packed_attention(PACKED_IDS, PACKED_VALID, 15, causal=False)
  jaxpr = jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(attend(*a) ** 2), argnums=(0, 2)))(
      logits, bias, value)
  conds = [e for e in helpers.all_equations(jaxpr) if e.primitive.name == 'cond']
  assert len(conds) == 2  # forward, and the backward that recomputes the taken branch
  return conds, value


def test_packed_shared_scores_attention_normalizes_once_for_the_whole_batch():
  """The branch taken when rows fit has no `[batch, heads, len, len]` value, backward included."""
  conds, _ = gradient_conds(seed=24)
  per_example = PACKED_IDS.shape[:1] + (HEADS,) + PACKED_IDS.shape[1:] * 2
  for cond in conds:
    slots_branch, general_branch = cond.params['branches'][1], cond.params['branches'][0]
    assert per_example not in helpers.traced_shapes(slots_branch)
    assert per_example in helpers.traced_shapes(general_branch)


def test_slot_branch_transposes_only_the_packed_rows():
  """Slot tensors stay keys-minor: the one large transpose is of the rows, in and out.

  On the H100, transposing slot tensors around head-batched matmuls cost more than the
  matmuls (BENCHMARKS.md, run I). Denominators `[heads, q, batch, slots]` may move (no
  head_dim axis: smaller than the values).
  """
  conds, value = gradient_conds(seed=27)
  for cond in conds:
    moved = [e.invars[0].aval.shape for e in helpers.all_equations(cond.params['branches'][1])
             if e.primitive.name == 'transpose' and e.invars[0].aval.size >= value.size]
    assert moved and all(sorted(shape) == sorted(value.shape) for shape in moved), moved


@pytest.mark.parametrize('causal', [False, True])
def test_packed_shared_scores_gradient_is_exactly_zero_where_no_output_depends_on_the_score(causal):
  """Positions past the longest segment (4 of 10 here), and the first causal row."""
  rows = [0, 2, 3]  # without the row of one long segment
  ids, valid = PACKED_IDS[rows], PACKED_VALID[rows]
  logits, _, value = random_inputs(25, *ids.shape)
  attend, _ = packed_attention(ids, valid, 15, causal)
  cotangent = jax.random.normal(jax.random.key(26), value.shape)
  grad = jax.grad(lambda s: jnp.sum(attend(s, None, value) * cotangent))(logits)
  np.testing.assert_array_equal(grad[..., 4:], 0.0)
  np.testing.assert_array_equal(grad[..., 4:, :], 0.0)
  if causal:
    np.testing.assert_array_equal(grad[..., 0, :], 0.0)
  assert np.all(np.abs(grad[..., 1:4, :2]) > 0)  # the rest does learn


def test_packed_shared_scores_attention_sharded_over_the_batch_equals_unsharded():
  """Segments built from batch-sharded ids: the same values, and only scalars cross devices."""
  logits, bias, value = random_inputs(27, *PACKED_IDS.shape)

  def attend(ids, valid, value):
    segments = segment_slots.PackedSegments.from_segment_ids(ids, valid, 15, causal=True)
    return packed_shared_scores.packed_shared_scores_attention(
        logits, bias, segments, value, core.packed_per_example_attention)

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  by_example = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  inputs = (jnp.asarray(PACKED_IDS), jnp.asarray(PACKED_VALID), value)
  sharded = jax.jit(attend, out_shardings=by_example)
  got = sharded(*jax.device_put(inputs, by_example))
  np.testing.assert_allclose(got, jax.jit(attend)(*inputs), rtol=1e-6, atol=1e-6)
  hlo = sharded.lower(*jax.device_put(inputs, by_example)).compile().as_text()
  collectives = re.findall(r'= (\S+) (all-reduce|all-gather|all-to-all|collective-permute)\(',
                           hlo)
  assert collectives  # `fits` and the slot groups' longest segments
  assert all(re.fullmatch(r'\(?([a-z0-9]+\[\],? ?)+\)?', shape) for shape, _ in collectives), (
      collectives)


def test_cross_attention_shapes_are_a_clear_error():
  logits, _, value = random_inputs(32, *PACKED_IDS.shape)
  attend, _ = packed_attention(PACKED_IDS, PACKED_VALID, 15, causal=False)
  with pytest.raises(ValueError, match='self-attention'):
    attend(logits[..., :6, :], None, value)


@pytest.mark.parametrize('attention_type', ['random', 'fixed_random', 'factorized_random',
                                            'random+vanilla'])
@pytest.mark.parametrize('num_slots', [15, 3])
def test_random_synthesizers_with_segments_equal_their_packed_dense_mask_path(attention_type,
                                                                             num_slots):
  length = PACKED_IDS.shape[1]
  ids, valid = jnp.asarray(PACKED_IDS), jnp.asarray(PACKED_VALID)
  packing = segment_slots.PackedSegments.from_segment_ids(ids, valid, num_slots, causal=True)
  mask = core.combine_masks(core.make_attention_mask(valid, valid),
                            core.make_attention_mask(ids, ids, jnp.equal),
                            core.make_causal_mask(ids))
  x = helpers.inputs(28, len(PACKED_IDS), length)
  bias = random_inputs(29, *PACKED_IDS.shape)[1]
  module = helpers.build(attention_type, max_query_length=length, max_key_length=length)
  variables = helpers.init(module, x)

  def run(params, x, segments):  # segments=None: the dense mask and per-example logits
    out = module.apply({**variables, 'params': params}, x, x, mask, bias,
                       segment_positions=packing.position, segments=segments)
    return jnp.where(valid[:, :, None], out, 0)

  want = run(variables['params'], x, None)
  np.testing.assert_allclose(run(variables['params'], x, packing), want, rtol=1e-5, atol=1e-5)
  loss = lambda p, x, s: jnp.sum(jnp.sin(run(p, x, s)))
  grads = [jax.grad(loss, argnums=(0, 1))(variables['params'], x, s) for s in (packing, None)]
  for got, want in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
