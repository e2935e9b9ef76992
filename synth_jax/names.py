"""The names command-line flags accept, importable without jax or TensorFlow.

A subcommand's `--help` lists them, and a misspelt one is refused, before anything heavy loads.
Each is the key list of a table in a module that imports jax; that module takes it from here
or is checked against it (`tests/test_names.py`).
"""
# `network.Transformer.attention_execution` (`attention.kernels.EXECUTIONS` is this tuple).
EXECUTIONS = ('reference', 'fast', 'blockwise', 'cudnn', 'xla', 'auto')
# The diagnostic models' position schemes (`diagnostics.model.POSITIONS` is this tuple).
POSITIONS = ('learned', 'sinusoidal', 'relative', 'none')
# `diagnostics.tasks.TASKS`, `diagnostics.presets.PRESETS`, `diagnostics.grid.GRIDS`.
DIAGNOSTIC_TASKS = ('mqar', 'induction', 'selective_copy', 'overwrite', 'extrapolation')
DIAGNOSTIC_PRESETS = ('tiny', 'full')
GRIDS = ('robust', 'robust_tiny')
