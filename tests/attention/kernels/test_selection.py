"""kernels/selection.py: top_k by selection passes (over the row, or over its chunks with the
largest maxima) equals jax.lax.top_k, ties and -inf included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention.kernels import selection


def tied_rows(seed, shape):
  """Integer-valued rows (many exact ties) with some -inf entries, as masked logits have."""
  rng = np.random.default_rng(seed)
  values = rng.integers(-3, 4, shape).astype(np.float32)
  values[rng.random(shape) < 0.2] = -np.inf
  return jnp.asarray(values)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('k', [1, 2, 5, 8, 16])
@pytest.mark.parametrize('shape', [(11,), (3, 17), (2, 3, 4, 24)])
def test_by_selection_equals_lax_top_k_values_and_positions(k, shape, dtype):
  values = tied_rows(k + len(shape), shape).astype(dtype)
  k = min(k, shape[-1])
  got_values, got_positions = jax.jit(selection.by_selection, static_argnums=1)(values, k)
  want_values, want_positions = jax.lax.top_k(values, k)
  assert got_values.shape == got_positions.shape == shape[:-1] + (k,)
  assert got_positions.dtype == jnp.int32 and got_values.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got_values, np.float32),
                                np.asarray(want_values, np.float32))
  np.testing.assert_array_equal(np.asarray(got_positions), np.asarray(want_positions))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('chunk', [1, 2, 3, 8])
@pytest.mark.parametrize('k', [1, 2, 5, 8, 16])
def test_by_chunks_equals_lax_top_k_values_and_positions(k, chunk, dtype):
  """Rows of 130 (the last chunk padded unless chunk divides it), every row's top k spread over
  tied chunk maxima, and one row of -inf alone."""
  values = tied_rows(k + chunk, (2, 5, 130)).astype(dtype).at[0, 0].set(-jnp.inf)
  got_values, got_positions = jax.jit(selection.by_chunks, static_argnums=(1, 2))(values, k,
                                                                                   chunk)
  want_values, want_positions = jax.lax.top_k(values, k)
  assert got_values.shape == got_positions.shape == (2, 5, k)
  assert got_positions.dtype == jnp.int32 and got_values.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got_values, np.float32),
                                np.asarray(want_values, np.float32))
  np.testing.assert_array_equal(np.asarray(got_positions), np.asarray(want_positions))


def test_by_chunks_picks_as_by_selection_where_they_differ_from_lax_top_k():
  """Signed zeros tie and NaN is never picked, a row with fewer than k others ending in n."""
  values = jnp.array([[-0.0, 0.0, -0.0, 0.0, -1.0, 0.0, 2.0, -0.0, 0.0],
                      [jnp.nan, 3.0, jnp.nan, jnp.nan, 1.0, jnp.nan, jnp.nan, jnp.nan, jnp.nan],
                      [jnp.nan, 5.0, 5.0, 5.0, jnp.nan, 5.0, 4.0, 5.0, 6.0]])
  got, want = selection.by_chunks(values, 4, chunk=2), selection.by_selection(values, 4)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_array_equal(np.asarray(got[1]), [[6, 0, 1, 2], [1, 4, 9, 9], [8, 1, 2, 3]])
  # A chunk of NaN alone must not displace a chunk of -inf (found by review, 2026-12-07).
  nan_chunks = jnp.array([[jnp.nan] * 8 + [-jnp.inf], [jnp.nan, jnp.nan, -jnp.inf, -jnp.inf] * 2
                          + [jnp.nan]])
  got, want = selection.by_chunks(nan_chunks, 2, chunk=2), selection.by_selection(nan_chunks, 2)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_array_equal(np.asarray(got[1]), [[8, 9], [2, 3]])


@pytest.mark.parametrize('top_k', [selection.by_selection, selection.by_chunks])
def test_plus_infinity_entries_are_picked_first_lowest_position_first(top_k):
  values = jnp.array([[1.0, jnp.inf, 2.0, jnp.inf, -jnp.inf], [jnp.inf] * 5])
  values = jnp.concatenate([values, jnp.full((2, 20), -jnp.inf)], axis=1)
  for got, want in zip(top_k(values, 3), jax.lax.top_k(values, 3)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize('top_k', [selection.by_selection, selection.by_chunks])
def test_signed_zeros_tie_as_the_docstring_says(top_k):
  _, positions = top_k(jnp.array([-0.0, 0.0, -0.0, 0.0] * 5), 2)
  np.testing.assert_array_equal(np.asarray(positions), [0, 1])


@pytest.mark.parametrize('top_k', [selection.by_selection, selection.by_chunks])
def test_a_row_of_only_minus_infinity_keeps_the_lowest_positions(top_k):
  values = jnp.full((2, 30), -jnp.inf).at[1, 24].set(0.0)
  _, positions = top_k(values, 3)
  np.testing.assert_array_equal(np.asarray(positions), [[0, 1, 2], [24, 0, 1]])


def lowered(top_k, k, platform, dtype=jnp.float32):
  return jax.jit(lambda x: top_k(x, k)).trace(jnp.zeros((4, 64, 520), dtype)).lower(
      lowering_platforms=(platform,)).as_text()


def test_top_k_takes_the_chunked_passes_on_nvidia_gpus_alone_for_small_k_and_floats():
  assert 'chlo.top_k' not in lowered(selection.top_k, selection.SELECTION_MAX_K, 'cuda')
  reductions = lambda top_k: lowered(top_k, 8, 'cuda').count('stablehlo.reduce')
  # by_chunks: the chunks' maxima, then 8 passes over them and 8 over the candidates
  assert reductions(selection.top_k) == reductions(selection.by_chunks)
  assert reductions(selection.by_chunks) > reductions(selection.by_selection) + 8
  assert 'chlo.top_k' in lowered(selection.top_k, 8, 'cpu')
  assert 'chlo.top_k' in lowered(selection.top_k, 8, 'tpu')
  assert 'chlo.top_k' in lowered(selection.top_k, selection.SELECTION_MAX_K + 1, 'cuda')
  assert 'chlo.top_k' in lowered(selection.top_k, 8, 'cuda', jnp.int32)


def test_integer_rows_go_to_lax_top_k_and_the_passes_refuse_them():
  values = jnp.array([[3, 1, 3, 2]], jnp.int32)
  got = jax.jit(selection.top_k, static_argnums=1)(values, 2)
  assert isinstance(got, tuple)
  np.testing.assert_array_equal(np.asarray(got[1]), [[0, 2]])
  with pytest.raises(ValueError, match='by_selection: int32 rows; it takes float16'):
    selection.by_selection(values, 2)
  with pytest.raises(ValueError, match='by_chunks: int32 rows; it takes float16'):
    selection.by_chunks(values, 2)


def test_selection_compiles_to_reductions_without_a_sort_or_top_k_call():
  compiled = lambda top_k: jax.jit(lambda x: top_k(x, 8)).lower(
      jnp.zeros((4, 64, 520))).compile().as_text()
  assert 'custom_call_target="TopK"' in compiled(jax.lax.top_k)  # what the check would see
  for top_k in (selection.by_selection, selection.by_chunks):
    hlo = compiled(top_k)
    assert ' sort(' not in hlo and 'TopK' not in hlo and ' fusion(' in hlo


@pytest.mark.parametrize('top_k', [selection.top_k, selection.by_selection, selection.by_chunks])
@pytest.mark.parametrize('k', [0, 12])
def test_top_k_outside_the_row_is_an_error_naming_the_range(top_k, k):
  with pytest.raises(ValueError, match=r'k=.* within 1\.\.11'):
    top_k(jnp.zeros((2, 11)), k)


@pytest.mark.parametrize('top_k', [selection.by_selection, selection.by_chunks])
def test_the_gradient_reaches_the_picked_entries_as_lax_top_k_s_does(top_k):
  values = jax.random.normal(jax.random.key(0), (3, 70))
  weights = jnp.arange(1.0, 6.0)
  loss = lambda top_k: lambda x: jnp.sum(top_k(x, 5)[0] * weights)
  grad = jax.grad(loss(top_k))(values)
  np.testing.assert_array_equal(np.asarray(grad), np.asarray(jax.grad(loss(jax.lax.top_k))(values)))
  assert np.count_nonzero(np.asarray(grad)) == 15
