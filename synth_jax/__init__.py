"""synth-jax: Synthesizer and orthogonal frozen-QK attention for T5 in JAX/Flax."""
__version__ = '0.1.0'
