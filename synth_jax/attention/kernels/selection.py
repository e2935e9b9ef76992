"""`jax.lax.top_k` for a small k by selection passes, with no sort.

Order a row's entries by (value descending, position ascending): `jax.lax.top_k` returns the
first k entries of that order (ties go to the lower position). Selection pass r finds the r-th:
the largest entry, in that order, among those after pass r-1's pick,

    pick_r = max { (x_p, -p) : (x_p, -p) < pick_{r-1} },    pick_0 = (+inf, +1),

one variadic reduction that reads the row and writes a `[...]` value and position. XLA hands a
`top_k` whose row it cannot give to its GPU top-k kernel (inputs of more than 2 dimensions, short
rows) to a full sort, which reads and writes the row about log2(n) times; k passes of reads cost
less while k is small (`SELECTION_MAX_K`): for k=8 of topk's first-pass rows at T5-base's shape,
`[128, 12, 512, 520]`, 10.9 ms against the sort's 20.8 ms, and against 26.7 ms for the rows
flattened to two dimensions and padded to 1024, the form XLA's GPU top-k kernel accepts. Passes
over the whole row are not needed either: the row's top k lie in the k chunks of 8 entries with
the largest maxima (`by_chunks`), so one reduction (the chunks' maxima) and passes over 8k
candidates do: 5.8 ms for the same rows (H100, 2026-12-07, `python
benchmarks/selection/selection_time.py 5 128,12,512,520`; BENCHMARKS.md, seventh run). On CPU
`by_chunks` is 2.2-2.7x faster than the passes over the row (31.1-38.3 against 82.9-84.6 ms for
k=8 of `[2, 8, 512, 520]`, the 2-core development machine, 2026-12-07,
`benchmarks/selection/cpu-2026-12-07-chunks.txt`), but XLA's CPU top-k call is faster than either
there (17.8-30.8 ms in the same runs), so `top_k` takes `by_chunks` on NVIDIA GPUs only; on TPU
they are unmeasured.

Exact for the rows attention gives it, finite or -inf floats, ties included; two differences
from `jax.lax.top_k` elsewhere: -0.0 and +0.0 tie (float equality, the rule `row_top_k`'s
threshold test uses too), where `lax.top_k` ranks +0.0 first; and NaN is never picked (a row with
fewer than k other entries gets position n, one past its end).
"""
import jax
import jax.numpy as jnp

Array = jax.Array
# Past some k a sort's ~log2(n) read-write passes over the row cost less than k read passes;
# only k=8 at n=520 has been timed (BENCHMARKS.md, seventh run): 16 is a guess within
# that bound.
SELECTION_MAX_K = 16
# Entries per chunk of `by_chunks`.
CHUNK = 8
# The dtypes whose infinities the passes' sentinels need; others go to `jax.lax.top_k`.
_SELECTABLE = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _larger_first(a, b):
  """The earlier of two (value, position) entries in the order of `jax.lax.top_k`."""
  (a_value, a_position), (b_value, b_position) = a, b
  a_first = (a_value > b_value) | ((a_value == b_value) & (a_position < b_position))
  return (jax.lax.select(a_first, a_value, b_value),
          jax.lax.select(a_first, a_position, b_position))


def top_k(values: Array, k: int) -> tuple[Array, Array]:
  """`jax.lax.top_k(values, k)`: `[..., n]` -> (`[..., k]` values, `[..., k]` int32 positions).

  By selection passes over the k chunks with the largest maxima (`by_chunks`) on NVIDIA GPUs
  for float rows while k <= SELECTION_MAX_K, else `jax.lax.top_k` itself; the same values,
  positions and gradients either way (for the rows the module docstring names).
  """
  _check(values, k)
  if k > SELECTION_MAX_K or values.dtype not in _SELECTABLE:
    return tuple(jax.lax.top_k(values, k))
  return jax.lax.platform_dependent(values, cuda=lambda v: by_chunks(v, k),
                                    default=lambda v: tuple(jax.lax.top_k(v, k)))


def by_selection(values: Array, k: int) -> tuple[Array, Array]:
  """`jax.lax.top_k(values, k)` by k selection passes on any backend, ties included."""
  _check(values, k)
  _check_selectable(values, 'by_selection')
  # The passes pick positions (a variadic reduction has no derivative rule); the values are
  # gathered at them, so their gradient reaches the picked entries as `jax.lax.top_k`'s does.
  positions = _selected_positions(jax.lax.stop_gradient(values), k)
  return jnp.take_along_axis(values, positions, axis=-1), positions


def by_chunks(values: Array, k: int, chunk: int = CHUNK) -> tuple[Array, Array]:
  """`jax.lax.top_k(values, k)` by selection passes over the k chunks with the largest maxima.

  The row is cut into chunks of `chunk` consecutive entries (the last padded with -inf). The k
  chunks first in the order of (maximum descending, chunk ascending) hold the row's top k: an
  entry of any other chunk has, before it in `jax.lax.top_k`'s order, the maximum of each of
  those k chunks. So one reduction over the row (the chunks' maxima) and passes over k * chunk
  candidates, ordered by their positions in the row, replace k passes over the whole row. The
  same values, positions, ties and gradients as `by_selection`.
  """
  _check(values, k)
  _check_selectable(values, 'by_chunks')
  n = values.shape[-1]
  count = -(-n // chunk)
  if count <= k:
    return by_selection(values, k)
  rows = jax.lax.stop_gradient(values)
  rows = jnp.pad(rows, [(0, 0)] * (rows.ndim - 1) + [(0, count * chunk - n)],
                 constant_values=-jnp.inf)
  chunks = rows.reshape(*rows.shape[:-1], count, chunk)
  nan = jnp.isnan(chunks)
  maxima = jnp.max(jnp.where(nan, -jnp.inf, chunks), axis=-1)  # NaN: never picked
  # A chunk of NaN alone ranks after every other (its -inf maximum must not displace real -inf).
  order = jnp.arange(count, dtype=jnp.int32) + jnp.where(jnp.all(nan, -1), count, 0)
  chosen = _selected_positions(maxima, k, order, 2 * count) % count  # [..., k] chunk indices
  candidates = jnp.take_along_axis(chunks, chosen[..., None], axis=-2)
  position = chosen[..., None] * chunk + jnp.arange(chunk, dtype=jnp.int32)
  flat = lambda x: x.reshape(*x.shape[:-2], k * chunk)
  positions = jnp.minimum(_selected_positions(flat(candidates), k, flat(position), count * chunk),
                          n)  # a row with fewer than k non-NaN entries ends in n, as by_selection
  return jnp.take_along_axis(values, positions, axis=-1), positions


def _check_selectable(values: Array, name: str):
  if values.dtype not in _SELECTABLE:
    raise ValueError(f'{name}: {values.dtype} rows; it takes float16, bfloat16, float32 '
                     'or float64 (selection.top_k sends other dtypes to jax.lax.top_k).')


def _check(values: Array, k: int):
  n = values.shape[-1]
  if not 1 <= k <= n:
    raise ValueError(f'top_k: k={k} must be within 1..{n}, the length of the row.')


def _selected_positions(values: Array, k: int, position: Array = None, end: int = 0) -> Array:
  """`[..., n]` -> `[..., k]` int32: the positions of the k selection passes' picks.

  position: each entry's position in the order's tie rule (default: its index); end: a position
  after every entry's, what a pass returns once no entry is left (default: n).
  """
  axis = values.ndim - 1
  n = values.shape[-1]
  if position is None:
    position, end = jax.lax.broadcasted_iota(jnp.int32, values.shape, axis), n
  lowest = jnp.array(-jnp.inf, values.dtype)
  last_value = jnp.full(values.shape[:-1], jnp.inf, values.dtype)
  last_position = jnp.full(values.shape[:-1], -1, jnp.int32)
  picked_positions = []
  for _ in range(k):
    previous_value, previous_position = last_value[..., None], last_position[..., None]
    after = (values < previous_value) | ((values == previous_value)
                                         & (position > previous_position))
    # Entries at or before the last pick compare as (-inf, end): after every remaining entry.
    last_value, last_position = jax.lax.reduce(
        (jnp.where(after, values, lowest), jnp.where(after, position, end)),
        (lowest, jnp.int32(end)), _larger_first, (axis,))
    picked_positions.append(last_position)
  return jnp.stack(picked_positions, axis=-1)
