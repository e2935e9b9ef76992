"""Writes a GPU profile's kernel events and the compiled HLO of one small jitted gradient to
$OUT/trace_sample.json, to check how `synth_jax/benchmark/trace.py` maps kernels to op names:

  PYTHONPATH=$PWD python benchmarks/h100-2026-12-07-blockwise/trace_sample.py   # on a GPU
"""
import glob
import gzip
import json
import os

import jax
import jax.numpy as jnp

from synth_jax.benchmark import trace


def loss(w, x):
  with jax.named_scope('blockwise_forward'):
    return jnp.sum(jnp.tanh(x @ w) ** 2)


step = jax.jit(jax.grad(loss))
w, x = jnp.ones((256, 256)), jnp.ones((512, 256))
compiled = step.lower(w, x).compile()
compiled(w, x).block_until_ready()
with jax.profiler.trace('/tmp/trace_sample', create_perfetto_trace=True):
  compiled(w, x).block_until_ready()
path = glob.glob('/tmp/trace_sample/**/perfetto_trace.json.gz', recursive=True)[0]
kernels = trace.device_kernels(json.load(gzip.open(path))['traceEvents'])
with open(os.path.join(os.environ['OUT'], 'trace_sample.json'), 'w') as f:
  json.dump({'kernels': kernels[:40], 'hlo': compiled.as_text()}, f)
