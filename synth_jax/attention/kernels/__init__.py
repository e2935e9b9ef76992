"""Faster exact computations of attention, and the one dispatch that chooses among them.

The reference path (`core.Attention.mix_heads`) is what every variant means; a kernel here
computes the same heads with less memory traffic, for the cases it states. `Dispatch` looks only
at what the variant declares (`query_key`, `shared_logits`, `kernel_features`), the form of the
mask and the run's option, and returns None whenever no kernel applies, so the reference runs.
Each kernel has a test that it equals the reference, values and gradients, masks included
(`tests/attention/kernels/`).

  flash.py          query-key variants through `jax.nn.dot_product_attention` (cuDNN on GPU)
  shared_scores.py  batch-shared logits (random synthesizers) normalized once per step
  packed_gather.py  score tables read within packed segments, with a collision-free gradient
  linear_scan.py    linear attention's normalized kernel as key sums (prefix sums when causal)
"""
import dataclasses
from typing import Optional

from synth_jax.attention import core
from synth_jax.attention.kernels import flash
from synth_jax.attention.kernels import linear_scan
from synth_jax.attention.kernels import packed_gather
from synth_jax.attention.kernels import shared_scores

# How a run executes attention (`network.Transformer.attention_execution`):
#   'reference'               the core path only;
#   'fast'                    plus the exact rewrites that run anywhere (shared scores, packed
#                             gather, linear attention's key sums);
#   'cudnn' / 'xla' / 'auto'  plus query-key attention through `jax.nn.dot_product_attention`
#                             with that implementation ('auto' lets JAX choose).
EXECUTIONS = ('reference', 'fast', 'cudnn', 'xla', 'auto')


@dataclasses.dataclass(frozen=True)
class Dispatch:
  """`core.Attention.dispatch`: the fastest exact path for a call, or None for the reference.

  Attributes:
    fused: None, or the `jax.nn.dot_product_attention` implementation for query-key variants:
      'cudnn', 'xla' or 'auto'.
  """
  fused: Optional[str] = None

  def __call__(self, module: core.Attention, inputs_q, key_features, value, mask, bias):
    if mask.step is not None:  # one decode step: nothing to fuse
      return None
    if module.kernel_features and linear_scan.applies(mask, inputs_q.shape[1]):
      log_q, log_k = module.feature_logs(inputs_q, key_features)
      return linear_scan.linear_attention(log_q, log_k, value, mask, module.chunk_size)
    if module.query_key and self.fused and inputs_q.shape[1] > 1:
      return flash.flash_attention(
          module.queries(inputs_q, mask), module.keys(key_features, mask), value, bias, mask,
          scale=module.logit_scale(key_features.shape[-1]),
          implementation=None if self.fused == 'auto' else self.fused)
    if module.shared_logits and (bias is None or bias.shape[0] == 1):
      lengths = mask.lengths()
      if lengths is not None:
        logits = module.attention_logits(inputs_q, key_features, mask)
        return shared_scores.shared_scores_attention(logits, bias, lengths[1], value, mask.causal)
      if mask.self_attention and mask.query_positions is not None:
        logits = packed_gather.gather_within_segments(module.score_table(),
                                                      mask.query_positions)
        return core.mix(core.normalize(logits, mask.dense(), bias), value)
    return None


def dispatch_for(execution: str, where: str = 'attention_execution') -> Optional[Dispatch]:
  """The `Dispatch` of a run option (`EXECUTIONS`); None for 'reference'."""
  if execution not in EXECUTIONS:
    raise ValueError(f'{where}={execution!r} is not an attention execution; use one of '
                     f'{", ".join(map(repr, EXECUTIONS))}.')
  if execution == 'reference':
    return None
  return Dispatch(fused=None if execution == 'fast' else execution)
