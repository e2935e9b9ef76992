"""Profile summaries: device time by kernel, kind and model part, from a trace and the HLO."""
import gzip
import json
import os

import jax
import jax.numpy as jnp
import pytest

from synth_jax.attention import masks
from synth_jax.attention.kernels import blockwise
from synth_jax.attention.scores import Scores
from synth_jax.benchmark import trace


def _write_trace(directory, events, device='/device:GPU:0'):
  path = os.path.join(directory, 'plugins', 'profile', 'run', 'perfetto_trace.json.gz')
  os.makedirs(os.path.dirname(path))
  meta = [{'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': device}},
          {'ph': 'M', 'name': 'process_name', 'pid': 2, 'args': {'name': '/host:CPU'}}]
  with gzip.open(path, 'wt') as f:
    json.dump({'traceEvents': meta + events}, f)


def _kernel(name, hlo_op, ts, dur, pid=1, op_name=None):
  args = {**({'hlo_op': hlo_op} if hlo_op else {}), **({'name': op_name} if op_name else {})}
  return {'ph': 'X', 'pid': pid, 'name': name, 'ts': ts, 'dur': dur, 'args': args}


HLO = '''
HloModule jit_step
ENTRY %main {
  %fusion.3 = f32[4]{0} fusion(f32[4]{0} %p), kind=kLoop, calls=%fc, metadata={op_name="jit(step)/transpose(jvp(Transformer))/encoder/layers_0/attention/blockwise_backward/while/body/exp" source_file="x.py" source_line=1}
  %input_reduce_fusion.96 = f32[4]{0} fusion(f32[4]{0} %fusion.3), kind=kInput, calls=%fr, metadata={op_name="jit(step)/jvp(Transformer)/encoder/layers_0/attention/row_top_k/reduce_max"}
  ROOT %custom-call.1 = f32[4,4]{1,0} custom-call(f32[4]{0} %fusion.3), custom_call_target="__cublas$gemm", metadata={op_name="jit(step)/jvp(Transformer)/decoder/layers_1/mlp/wi/dot_general"}
}
'''


def test_summary_sums_device_kernels_by_kind_and_model_part(tmp_path):
  _write_trace(str(tmp_path), [
      _kernel('loop_exp_fusion', 'fusion.3', ts=0, dur=3000),
      _kernel('loop_exp_fusion', 'fusion.3', ts=5000, dur=1000),
      _kernel('nvjet_tst_128x64', 'custom-call.1', ts=3000, dur=2000),
      _kernel('input_reduce_fusion', 'fusion.9', ts=6000, dur=2000),  # not in the HLO text
      # Not in the HLO text either, but the event names its op (as GPU traces do); a name of
      # the module alone says nothing.
      _kernel('loop_add_fusion', 'fusion.7', ts=8000, dur=2000,
              op_name='jit(step)/transpose(jvp(Transformer))/decoder/layers_0/mlp/add'),
      _kernel('loop_copy_fusion', 'fusion.8', ts=10000, dur=2000, op_name='jit(step)'),
      # No instruction named: the kernel's name is its instruction's, as XLA's GPU backend
      # writes it (dots as underscores).
      _kernel('input_reduce_fusion_96', None, ts=12000, dur=2000),
      _kernel('host_work', 'fusion.3', ts=0, dur=99000, pid=2),  # host events are left out
  ])
  summary = trace.summarize(str(tmp_path), steps=2, hlo_text=HLO)
  assert summary['total_ms'] == pytest.approx(7.0)  # 14 ms of kernels over 2 steps
  assert summary['span_ms'] == pytest.approx(7.0)  # first start 0, last end 14 ms
  assert summary['by_category'] == pytest.approx(
      {'other fusion': 4.0, 'matmul': 1.0, 'reduce': 2.0})
  assert summary['by_part'] == pytest.approx(
      {'blockwise_backward': 2.0, 'forward mlp': 1.0, 'unattributed': 2.0, 'backward mlp': 1.0,
       'forward row_top_k': 1.0})
  first = summary['top'][0]
  assert (first['kernel'], first['ms'], first['calls']) == ('loop_exp_fusion', 2.0, 1.0)
  assert first['op_name'].endswith('blockwise_backward/while/body/exp')
  assert list(summary['by_part'])[:2] == ['blockwise_backward', 'unattributed']


def test_summary_is_empty_without_device_events_or_trace(tmp_path):
  assert trace.summarize(str(tmp_path / 'none'), steps=1) == {}
  _write_trace(str(tmp_path), [_kernel('k', 'fusion.3', 0, 10, pid=2)], device='/host:CPU')
  assert trace.summarize(str(tmp_path), steps=1) == {}


@pytest.mark.parametrize('op_name, part', [
    ('jit(step)/transpose(jvp(Transformer))/encoder/layers_0/pre_attention_layer_norm/mul',
     'backward layer_norm'),
    ('jit(step)/jvp(Transformer)/encoder/layers_0/attention/query/dot_general',
     'forward attention'),
    ('jit(step)/jvp(Transformer)/encoder/layers_0/attention/blockwise_forward/while/exp',
     'blockwise_forward'),
    ('jit(step)/jvp(Transformer)/decoder/logits_dense/dot_general', 'forward logits_dense'),
    ('jit(step)/adam/mul', 'forward other'),
    (None, 'unattributed'),
])
def test_model_part(op_name, part):
  assert trace.model_part(op_name) == part


def test_compiled_blockwise_attention_names_its_scopes_in_the_hlo():
  """The named scopes of the blockwise kernel reach the compiled program's op names, which is
  what lets a profile split its time into forward and backward passes."""
  batch, length, heads, dim = 1, 8, 2, 4
  query = jnp.ones((batch, length, heads, dim))
  mask = masks.Mask(query_valid=jnp.ones((batch, length), bool),
                    key_valid=jnp.ones((batch, length), bool), causal=True)
  function = lambda params, q, k: jnp.einsum('bqhd,bkhd->bhqk', q, k)

  def loss(q):
    return jnp.sum(blockwise.blockwise_attention(Scores(function, {}, q, q), q, mask,
                                                 block_size=4))
  text = jax.jit(jax.grad(loss)).lower(query).compile().as_text()
  parts = {trace.model_part(name) for name in trace.op_names(text).values()}
  assert {'blockwise_forward', 'blockwise_backward'} <= parts
