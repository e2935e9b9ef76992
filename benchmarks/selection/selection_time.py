"""Top-k of attention rows on this machine's default backend (CPU unless a GPU is visible), for
the shape of topk's blockwise first pass: `jax.lax.top_k` as called, `jax.lax.top_k` of the rows
flattened to two dimensions and padded to 1024 entries with -inf (the form XLA's GPU top-k kernel
takes: at most 2 dimensions, rows of at least 1024, k <= 16; padding sits at the end, so the
tie rule ranks it last), the selection passes over the row (`selection.by_selection`) and over
the entries of the k chunks of 8 with the largest maxima (`selection.by_chunks`).

  python benchmarks/selection/selection_time.py [REPEATS] [SHAPE]     e.g. 5 128,12,512,520

Prints milliseconds per call (median of REPEATS after one compile-and-run call) of each, for k=8
of float32 rows (default `[2, 8, 512, 520]`: batch, heads, a block of 512 queries, 8 carried +
512 keys), and whether each returns `jax.lax.top_k`'s values and positions on rows with ties.
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention.kernels import selection

PADDED_ROW = 1024


def padded_rows(values, k: int):
  """`jax.lax.top_k` of `[..., n]` rows reshaped to `[rows, max(n, 1024)]`, -inf padded."""
  n = values.shape[-1]
  flat = values.reshape(-1, n)
  if n < PADDED_ROW:
    flat = jnp.pad(flat, ((0, 0), (0, PADDED_ROW - n)), constant_values=-jnp.inf)
  top, positions = jax.lax.top_k(flat, k)
  return (top.reshape(*values.shape[:-1], k), positions.reshape(*values.shape[:-1], k))


METHODS = (('jax.lax.top_k', lambda x, k: tuple(jax.lax.top_k(x, k))),
           ('2-D rows, padded', padded_rows),
           ('selection passes', selection.by_selection),
           ('chunks, then passes', selection.by_chunks))


def milliseconds(top_k, rows, k: int, repeats: int) -> float:
  run = jax.jit(lambda x: top_k(x, k))
  jax.block_until_ready(run(rows))
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(run(rows))
    times.append((time.perf_counter() - started) * 1e3)
  return statistics.median(times)


def exact(top_k, k: int) -> bool:
  """The same values and positions as `jax.lax.top_k` on rows with many ties and -inf (no
  zeros: the passes tie -0.0 with +0.0 where `jax.lax.top_k` ranks +0.0 first)."""
  rows = jnp.round(jax.random.normal(jax.random.key(1), (4, 3, 64, 520)) * 2) / 2 + 0.25
  rows = jnp.where(jax.random.uniform(jax.random.key(2), rows.shape) < 0.3, -jnp.inf, rows)
  rows = rows.at[0, 0, 0, 3:].set(-jnp.inf)  # a row with fewer than k finite entries
  want, got = jax.lax.top_k(rows, k), jax.jit(lambda x: top_k(x, k))(rows)
  return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(want, got))


def main(repeats: int = 5, shape: str = '2,8,512,520'):
  rows = jax.random.normal(jax.random.key(0), tuple(int(n) for n in shape.split(',')))
  print(f'{jax.devices()[0].device_kind}; k=8 of {list(rows.shape)} float32; median of '
        f'{repeats}')
  for name, top_k in METHODS:
    print(f'{name:<20} {milliseconds(top_k, rows, 8, repeats):8.1f} ms   '
          f'exact: {exact(top_k, 8)}')


if __name__ == '__main__':
  main(*[int(a) if a.isdigit() else a for a in sys.argv[1:]])
