"""`synth-jax bench` / `python -m synth_jax.bench`: the training-step benchmark (its code:
`synth_jax/benchmark/`)."""
import sys

from synth_jax.benchmark.driver import main

if __name__ == '__main__':
  sys.exit(main())
