"""Where a profiled step's device time goes: by kernel, by kind of kernel, and by model part.

`summarize` reads the Chrome-trace JSON that `jax.profiler.trace(create_perfetto_trace=True)`
writes and sums the events of the device processes ('/device:GPU:0', ...). XLA names a fusion's
kernel after the fusion (`loop_multiply_fusion_3`), libraries keep theirs (`nvjet_...`), and each
event's `hlo_op` argument names the HLO instruction that launched it. Given the compiled step's
HLO text, that instruction's `op_name` metadata (JAX's name stack: jitted function, Flax module
path, `jax.named_scope`s, `transpose(jvp(...))` on the backward pass) says which part of the model
the time belongs to; a GPU trace's events also carry that name themselves.
"""
import glob
import gzip
import json
import os
import re
from typing import Optional

KERNEL_CATEGORIES = (  # (category, substrings of a GPU kernel name); the first match wins
    ('matmul', ('gemm', 'nvjet', 'xmma', 'cutlass', 'cublas')),
    ('fused attention', ('cudnn', 'fmha', 'flash')),
    ('scatter', ('scatter',)), ('gather', ('gather',)), ('transpose', ('transpose',)),
    ('reduce', ('reduce',)),
)

# Parts of a T5 step, by a piece of the op name; the first match wins (a layer norm's module is
# named 'pre_attention_layer_norm', so norms come before attention; the blockwise kernel's
# named scopes before the attention module holding them).
MODEL_PARTS = ('blockwise_forward', 'blockwise_backward', 'row_top_k', 'relpos_bias',
               'layer_norm', 'encoder_norm', 'decoder_norm', 'logits_dense', 'token_embedder',
               'mlp', 'attention')

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]*)"')
_KERNEL_NAME = re.compile(r'[^A-Za-z0-9_]')  # what a kernel's name has in place of these


def op_names(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: its `op_name` metadata} of an HLO module's text, each name also as
  XLA's GPU backend names the instruction's kernel (`input_reduce_fusion.96` launches
  `input_reduce_fusion_96`), for events that name no instruction."""
  names = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      names.setdefault(match.group(1), match.group(2))
      names.setdefault(_KERNEL_NAME.sub('_', match.group(1)), match.group(2))
  return names


def model_part(op_name: Optional[str]) -> str:
  """'backward ' or 'forward ' and the first of `MODEL_PARTS` in `op_name` ('other' if none;
  'unattributed' without an op name)."""
  if not op_name:
    return 'unattributed'
  backward = 'transpose(' in op_name or 'blockwise_backward' in op_name
  part = next((p for p in MODEL_PARTS if p in op_name), 'other')
  return part if part.startswith('blockwise') else f'{"backward" if backward else "forward"} {part}'


def _category(kernel: str) -> str:
  name = kernel.lower()
  return next((k for k, keys in KERNEL_CATEGORIES if any(key in name for key in keys)),
              'other fusion')


def device_kernels(events: list) -> list:
  """The kernel events ('X') of a trace's device processes ('/device:GPU:0', ...)."""
  devices = {e['pid'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and e['args'].get('name', '').startswith('/device:')}
  return [e for e in events if e.get('ph') == 'X' and e.get('pid') in devices]


def _op_name(args: dict, names: dict, kernel: str) -> Optional[str]:
  """The op name of a kernel event: the event's own `name` argument where it holds more than the
  module (a GPU trace's kernels carry one in a small program), else the metadata of its HLO
  instruction (`hlo_op`), else that of the instruction its kernel is named after (the bench's
  step on the H100, 2026-12-07, ran kernels whose events led to no op name otherwise)."""
  own = args.get('name', '')
  if '/' in own:
    return own
  return names.get(args.get('hlo_op', '')) or names.get(kernel)


def _sorted(totals: dict) -> dict:
  return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def summarize(profile_dir: str, steps: int, hlo_text: str = '', top: int = 30) -> dict:
  """Device time (ms per step) of the newest trace under `profile_dir`, `steps` steps long.

  Returns `{'total_ms', 'span_ms', 'by_category': {kind: ms}, 'by_part': {part: ms},
  'top': [{kernel, ms, calls, op_name}]}` (`top`: per kernel and op name), or {} without a
  trace or device events (a CPU run). A kernel's op name is its event's own, else its
  instruction's in the step's `hlo_text`; a kernel with neither is 'unattributed'.
  """
  paths = glob.glob(os.path.join(profile_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    return {}
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    kernels = device_kernels(json.load(f)['traceEvents'])
  if not kernels:
    return {}
  names = op_names(hlo_text)
  by_kernel, by_category, by_part = {}, {}, {}
  for e in kernels:
    ms = e['dur'] / 1e3 / steps
    op_name = _op_name(e.get('args', {}), names, e['name'])
    # One library kernel (a cuBLAS GEMM) serves many ops: an entry per kernel and op.
    entry = by_kernel.setdefault((e['name'], op_name), {
        'kernel': e['name'][:100], 'ms': 0.0, 'calls': 0, 'op_name': (op_name or '')[:300]})
    entry['ms'] += ms
    entry['calls'] += 1 / steps
    kind, part = _category(e['name']), model_part(op_name)
    by_category[kind] = by_category.get(kind, 0.0) + ms
    by_part[part] = by_part.get(part, 0.0) + ms
  span = max(e['ts'] + e['dur'] for e in kernels) - min(e['ts'] for e in kernels)
  return {'total_ms': sum(by_category.values()), 'span_ms': span / 1e3 / steps,
          'by_category': _sorted(by_category), 'by_part': _sorted(by_part),
          'top': sorted(by_kernel.values(), key=lambda t: -t['ms'])[:top]}
