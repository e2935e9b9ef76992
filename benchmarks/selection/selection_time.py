"""Top-k of attention rows: `jax.lax.top_k` against the selection passes, on this machine's
default backend (CPU unless a GPU is visible), for the shape of topk's blockwise first pass.

  python benchmarks/selection/selection_time.py [REPEATS]

Prints milliseconds per call (median of REPEATS after one compile-and-run call) of each, for k=8
of `[2, 8, 512, 520]` float32 rows (batch, heads, a block of 512 queries, 8 carried + 512 keys).
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from synth_jax.attention.kernels import selection


def milliseconds(top_k, rows, k: int, repeats: int) -> float:
  run = jax.jit(lambda x: top_k(x, k))
  jax.block_until_ready(run(rows))
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(run(rows))
    times.append((time.perf_counter() - started) * 1e3)
  return statistics.median(times)


def main(repeats: int = 5):
  rows = jax.random.normal(jax.random.key(0), (2, 8, 512, 520), jnp.float32)
  print(f'{jax.devices()[0].device_kind}; k=8 of {list(rows.shape)} float32; median of '
        f'{repeats}')
  for name, top_k in (('jax.lax.top_k', jax.lax.top_k), ('selection passes',
                                                          selection.by_selection)):
    print(f'{name:<18} {milliseconds(top_k, rows, 8, repeats):8.1f} ms')


if __name__ == '__main__':
  main(*[int(a) for a in sys.argv[1:]])
