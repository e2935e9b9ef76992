"""XLA flags that make the tests' tiny CPU programs compile fast (no imports: tests/conftest.py
sets them before jax loads; tests/fixtures.py passes them to the tests' subprocesses).

Compiling is most of the suite's time: its programs are tiny and most run a few times. Measured
on 2 cores (2026-12-07, the tiny T5's gradient under four attention paths): 5.5 s at XLA's
defaults, 2.8 s with LLVM at -O0, 1.2-1.5 s with the older loop emitters for fusions as well.
The HLO passes are the same, so the values are the default flags' up to float rounding.
"""
XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')
