"""Writes a GPU profile's kernel events and the compiled HLO of one small jitted gradient to
$OUT/trace_sample.json, to check how `synth_jax/benchmark/trace.py` maps kernels to op names."""
import glob
import gzip
import json
import os

import jax
import jax.numpy as jnp


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
events = json.load(gzip.open(path))['traceEvents']
processes = {e['pid']: e['args'].get('name') for e in events
             if e.get('ph') == 'M' and e.get('name') == 'process_name'}
kernels = [e for e in events if e.get('ph') == 'X' and 'device' in str(processes.get(e['pid']))]
with open(os.path.join(os.environ['OUT'], 'trace_sample.json'), 'w') as f:
  json.dump({'processes': processes, 'kernels': kernels[:40], 'hlo': compiled.as_text()}, f)
