"""kernels/selection.py: top_k by selection passes equals jax.lax.top_k, ties and -inf included."""
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


def test_plus_infinity_entries_are_picked_first_lowest_position_first():
  values = jnp.array([[1.0, jnp.inf, 2.0, jnp.inf, -jnp.inf], [jnp.inf] * 5])
  for got, want in zip(selection.by_selection(values, 3), jax.lax.top_k(values, 3)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_signed_zeros_tie_as_the_docstring_says():
  _, positions = selection.by_selection(jnp.array([-0.0, 0.0, -0.0, 0.0]), 2)
  np.testing.assert_array_equal(np.asarray(positions), [0, 1])


def test_a_row_of_only_minus_infinity_keeps_the_lowest_positions():
  values = jnp.full((2, 9), -jnp.inf).at[1, 4].set(0.0)
  _, positions = selection.by_selection(values, 3)
  np.testing.assert_array_equal(np.asarray(positions), [[0, 1, 2], [4, 0, 1]])


def lowered(top_k, k, platform, dtype=jnp.float32):
  return jax.jit(lambda x: top_k(x, k)).trace(jnp.zeros((4, 64, 520), dtype)).lower(
      lowering_platforms=(platform,)).as_text()


def test_top_k_takes_the_selection_passes_on_nvidia_gpus_alone_for_small_k_and_floats():
  assert 'chlo.top_k' not in lowered(selection.top_k, selection.SELECTION_MAX_K, 'cuda')
  assert 'stablehlo.reduce' in lowered(selection.top_k, 8, 'cuda')
  assert 'chlo.top_k' in lowered(selection.top_k, 8, 'cpu')
  assert 'chlo.top_k' in lowered(selection.top_k, 8, 'tpu')
  assert 'chlo.top_k' in lowered(selection.top_k, selection.SELECTION_MAX_K + 1, 'cuda')
  assert 'chlo.top_k' in lowered(selection.top_k, 8, 'cuda', jnp.int32)


def test_integer_rows_go_to_lax_top_k_and_by_selection_refuses_them():
  values = jnp.array([[3, 1, 3, 2]], jnp.int32)
  got = jax.jit(selection.top_k, static_argnums=1)(values, 2)
  assert isinstance(got, tuple)
  np.testing.assert_array_equal(np.asarray(got[1]), [[0, 2]])
  with pytest.raises(ValueError, match='int32 rows; it takes float16'):
    selection.by_selection(values, 2)


def test_selection_compiles_to_reductions_without_a_sort_or_top_k_call():
  compiled = lambda top_k: jax.jit(lambda x: top_k(x, 8)).lower(
      jnp.zeros((4, 64, 520))).compile().as_text()
  assert 'custom_call_target="TopK"' in compiled(jax.lax.top_k)  # what the check would see
  hlo = compiled(selection.by_selection)
  assert ' sort(' not in hlo and 'TopK' not in hlo and ' fusion(' in hlo


@pytest.mark.parametrize('top_k', [selection.top_k, selection.by_selection])
@pytest.mark.parametrize('k', [0, 12])
def test_top_k_outside_the_row_is_an_error_naming_the_range(top_k, k):
  with pytest.raises(ValueError, match=r'k=.* within 1\.\.11'):
    top_k(jnp.zeros((2, 11)), k)


def test_the_gradient_reaches_the_picked_entries_as_lax_top_k_s_does():
  values = jax.random.normal(jax.random.key(0), (3, 20))
  weights = jnp.arange(1.0, 6.0)
  loss = lambda top_k: lambda x: jnp.sum(top_k(x, 5)[0] * weights)
  np.testing.assert_array_equal(np.asarray(jax.grad(loss(selection.by_selection))(values)),
                                np.asarray(jax.grad(loss(jax.lax.top_k))(values)))
