"""The packed score-table gather, and the packed path of random synthesizers built on it.

The gather equals the plain one with a scatter-free gradient; a packed row through the 'fast'
path equals each of its segments attended alone, and sharding the batch changes nothing.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import kernels
from synth_jax.attention import masks
from synth_jax.attention.kernels import packed_gather
from tests.attention import helpers

# Rows of segment ids: several segments and trailing padding, one segment, odd layouts.
SEGMENT_IDS = jnp.array([[1, 1, 1, 2, 2, 3, 3, 3, 0, 0],
                         [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                         [1, 2, 2, 2, 2, 2, 2, 2, 2, 0],
                         [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])

# Packed rows (seqio layout, 0 = trailing padding) and their valid tokens: three segments with
# one padding token inside the first, one segment filling the row, four segments with a tie in
# length, and a row of padding only.
PACKED_IDS = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0],
                       [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                       [1, 1, 2, 2, 3, 3, 3, 4, 0, 0],
                       [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
PACKED_VALID = (PACKED_IDS > 0) & ~((np.arange(10) == 2)[None] & (PACKED_IDS == 1))
LENGTH = PACKED_IDS.shape[1]


def naive(table, positions):
  """The plain gather, then the same-segment mask: what autodiff would differentiate."""
  starts = jnp.arange(positions.shape[1])[None] - positions
  same = starts[:, :, None] == starts[:, None, :]
  gathered = jnp.moveaxis(table[:, positions[:, :, None], positions[:, None, :]], 0, 1)
  return jnp.where(same[:, None], gathered, 0)


@pytest.mark.parametrize('table_shape', [(2, 10, 10), (3, 12, 11)])
def test_values_and_gradient_equal_the_plain_gather(table_shape):
  positions = masks.segment_positions(SEGMENT_IDS)
  table = jax.random.normal(jax.random.key(0), table_shape)
  out = packed_gather.gather_within_segments(table, positions)
  assert out.shape == (4, table_shape[0], 10, 10)
  np.testing.assert_array_equal(out, naive(table, positions))
  # Row 0, token 3 (segment 2, position 0) sees table row 0 for its own segment's keys only.
  np.testing.assert_array_equal(out[0, :, 3, 3:5], table[:, 0, 0:2])
  np.testing.assert_array_equal(out[0, :, 3, :3], 0.0)

  cotangent = jax.random.normal(jax.random.key(1), out.shape)
  got = jax.grad(lambda t: jnp.sum(packed_gather.gather_within_segments(t, positions)
                                   * cotangent))(table)
  want = jax.grad(lambda t: jnp.sum(naive(t, positions) * cotangent))(table)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_gradient_has_no_scatter():
  positions = masks.segment_positions(SEGMENT_IDS)
  table = jnp.ones((2, 10, 10))
  jaxpr = jax.make_jaxpr(jax.grad(
      lambda t: jnp.sum(packed_gather.gather_within_segments(t, positions) ** 2)))(table)
  assert 'scatter' not in str(jaxpr)
  naive_jaxpr = jax.make_jaxpr(jax.grad(lambda t: jnp.sum(naive(t, positions) ** 2)))(table)
  assert 'scatter' in str(naive_jaxpr)  # what it replaces


def packed_mask(ids, valid, causal):
  tokens = jnp.where(jnp.asarray(valid), 7, 0)
  return masks.Mask.for_self_attention(tokens, jnp.asarray(ids), causal=causal)


def toeplitz_bias():
  """A T5-like bias `[1, heads, L, L]` that depends on j - i only, as the relative one does."""
  distance = jnp.abs(jnp.arange(LENGTH)[:, None] - jnp.arange(LENGTH)[None, :])
  return jnp.stack([0.3 * distance, -0.2 * distance])[None]


def build(variant, execution):
  return helpers.build(variant, max_query_length=LENGTH, max_key_length=LENGTH,
                       dispatch=kernels.dispatch_for(execution))


def each_segment_alone(module, variables, x, bias, causal):
  """Every segment as an example of its own, through the reference path, zero at padding."""
  out = jnp.zeros_like(x)
  for row, (row_ids, row_valid) in enumerate(zip(PACKED_IDS, PACKED_VALID)):
    for segment in set(row_ids[row_valid].tolist()):
      where = np.flatnonzero(row_ids == segment)
      start, n = where[0], len(where)
      valid = jnp.asarray(row_valid[start:start + n])[None]
      alone = masks.Mask(valid, valid, causal=causal, self_attention=True)
      segment_x = x[row:row + 1, start:start + n]
      seen = module.apply(variables, segment_x, segment_x, alone, bias[..., :n, :n])[0]
      out = out.at[row, start:start + n].set(jnp.where(valid[0][:, None], seen, 0))
  return out


@pytest.mark.parametrize('variant', ['random', 'fixed_random', 'factorized_random',
                                     'random+vanilla'])
@pytest.mark.parametrize('causal', [False, True])
def test_packed_random_synthesizers_equal_each_segment_alone(variant, causal, monkeypatch):
  """Values and the gradients w.r.t. the parameters and the inputs."""
  gathers = []
  original = packed_gather.gather_within_segments
  monkeypatch.setattr(packed_gather, 'gather_within_segments',
                      lambda *a: gathers.append(1) or original(*a))
  x = helpers.inputs(20, len(PACKED_IDS), LENGTH)
  bias = toeplitz_bias()
  fast, reference = build(variant, 'fast'), build(variant, 'reference')
  variables = helpers.init(reference, x)
  mask = packed_mask(PACKED_IDS, PACKED_VALID, causal)
  valid = jnp.asarray(PACKED_VALID)[:, :, None]

  def packed(params, x):
    out = fast.apply({**variables, 'params': params}, x, x, mask, bias)
    return jnp.where(valid, out, 0)

  def alone(params, x):
    return each_segment_alone(reference, {**variables, 'params': params}, x, bias, causal)

  np.testing.assert_allclose(packed(variables['params'], x), alone(variables['params'], x),
                             rtol=1e-5, atol=1e-5)
  assert gathers  # the packed row took the fast path
  cotangent = jax.random.normal(jax.random.key(21), x.shape)
  grads = [jax.jit(jax.grad(lambda p, x, f=f: jnp.sum(f(p, x) * cotangent), argnums=(0, 1)))(
      variables['params'], x) for f in (packed, alone)]
  for got, want in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('causal', [False, True])
def test_packed_gradient_is_exactly_zero_where_no_output_depends_on_the_score(causal):
  """Table positions past the longest segment (4 here), and the first causal row."""
  rows = [0, 2, 3]  # without the row of one long segment
  module = build('random', 'fast')
  x = helpers.inputs(25, len(rows), LENGTH)
  variables = helpers.init(module, x)
  mask = packed_mask(PACKED_IDS[rows], PACKED_VALID[rows], causal)
  cotangent = jax.random.normal(jax.random.key(26), x.shape)
  loss = lambda params: jnp.sum(module.apply({**variables, 'params': params}, x, x, mask)
                                * cotangent)
  grad = jax.grad(loss)(variables['params'])['random_logits']
  np.testing.assert_array_equal(grad[:, 4:], 0.0)
  np.testing.assert_array_equal(grad[:, :, 4:], 0.0)
  if causal:
    np.testing.assert_array_equal(grad[:, 0], 0.0)
  assert np.all(np.abs(grad[:, 1:4, :2]) > 0)  # the rest does learn


def test_packed_path_sharded_over_the_batch_equals_unsharded():
  """Each example attends within itself: the same values, and nothing crosses devices."""
  module = build('random', 'fast')
  x = helpers.inputs(27, len(PACKED_IDS), LENGTH)
  variables = helpers.init(module, x)
  bias = toeplitz_bias()

  def attend(ids, valid, x):
    tokens = jnp.where(valid, 7, 0)
    mask = masks.Mask.for_self_attention(tokens, ids, causal=True)
    return module.apply(variables, x, x, mask, bias)

  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ('data',))
  by_example = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  inputs = (jnp.asarray(PACKED_IDS), jnp.asarray(PACKED_VALID), x)
  sharded = jax.jit(attend, out_shardings=by_example)
  got = sharded(*jax.device_put(inputs, by_example))
  np.testing.assert_allclose(got, jax.jit(attend)(*inputs), rtol=1e-6, atol=1e-6)
  hlo = sharded.lower(*jax.device_put(inputs, by_example)).compile().as_text()
  assert not re.findall(r'(all-reduce|all-gather|all-to-all|collective-permute)\(', hlo)
