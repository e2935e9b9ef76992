"""XLA flags that make the tests' tiny CPU programs compile fast (no imports: tests/conftest.py
sets them before jax loads; tests/fixtures.py passes them to the tests' subprocesses).

Compiling is most of the suite's time: its programs are tiny and most run a few times. The tiny
T5's gradient under four attention paths compiles in 4.2 s at XLA's defaults, 2.4 s with LLVM at
-O0 and 1.0 s with the older loop emitters for fusions as well (2 idle CPU cores, 2026-12-07:
`python benchmarks/compile_flags/compile_flags.py`, output in `cpu-2026-12-07.txt` there). On
another machine of the same kind, slower to compile (2026-12-08, `cpu-2026-12-08.txt`): 5.2,
3.0 and 1.5 s, and 1.2 s with the machine code emitted in one piece instead of split across
threads that the two test workers' processes already keep busy. The HLO passes are the same, so
the values are the default flags' up to float rounding.
"""
XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false',
             '--xla_cpu_parallel_codegen_split_count=1')
