"""Compile time of the tests' tiny programs under XLA CPU flags (`tests/fast_compile.py`).

  python benchmarks/compile_flags/compile_flags.py

Each flag set runs in a fresh process with the compilation cache off: the gradient of the tests'
tiny T5 (`tests/fixtures.tiny_model`, batch 4, 16 tokens) under four attention paths is lowered,
then compiled; the time of the compiles alone is printed.
"""
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAG_SETS = ('', '--xla_backend_optimization_level=0',
             '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false',
             '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
             ' --xla_cpu_parallel_codegen_split_count=1')
PATHS = (('vanilla', 'fast'), ('hyperbolic', 'blockwise'), ('random', 'fast'),
         ('topk', 'blockwise'))


def compile_seconds() -> float:
  """In this process (XLA_FLAGS already set): the compiles of the gradients of `PATHS`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  tokens = jnp.ones((4, 16), jnp.int32)

  def lowered(attention, execution):
    model = fixtures.tiny_model(attention, attention_execution=execution)
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))
    loss = lambda v: jnp.sum(model.apply(v, tokens, tokens, tokens) ** 2)
    return jax.jit(jax.grad(loss)).lower(variables)
  programs = [lowered(*path) for path in PATHS]
  started = time.perf_counter()
  for program in programs:
    program.compile()
  return time.perf_counter() - started


def main():
  if len(sys.argv) > 1 and sys.argv[1] == '--child':
    print(f'{compile_seconds():.2f}')
    return
  for flags in FLAG_SETS:
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_ENABLE_COMPILATION_CACHE': 'false',
           'XLA_FLAGS': flags, 'PYTHONPATH': REPO}
    out = subprocess.run([sys.executable, __file__, '--child'], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()[-1]
    print(f'{out:>6} s  {flags or "(XLA defaults)"}', flush=True)


if __name__ == '__main__':
  main()
