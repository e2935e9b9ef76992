"""`python -m synth_jax.bench`: the training-step benchmark (its code: `synth_jax/benchmark/`)."""
from synth_jax.benchmark import driver

if __name__ == '__main__':
  driver.main()
