"""Tests of synth_jax.diagnostics."""
