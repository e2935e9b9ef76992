"""Faster exact computations of attention, and the one dispatch that chooses among them.

The reference path (`core.Attention.mix_heads`) is what every variant means; a kernel here
computes the same heads with less memory traffic, for the cases it states. `Dispatch` looks only
at what the variant declares (`query_key`, `shared_logits`, `kernel_features`), the form of the
mask and the run's option, and returns None whenever no kernel applies, so the reference runs.
Each kernel has a test that it equals the reference, values and gradients, masks included
(`tests/attention/kernels/`).

  flash.py          query-key forms through `jax.nn.dot_product_attention` (cuDNN on GPU)
  shared_scores.py  batch-shared logits (random synthesizers) normalized once per step
  packed_gather.py  score tables read within packed segments, with a collision-free gradient
  linear_scan.py    linear attention's normalized kernel as key sums (prefix sums when causal)
  blockwise.py      any variant's `Scores`, block by block with its own backward pass
"""
import dataclasses
from typing import Optional

from synth_jax import names
from synth_jax.attention import core
from synth_jax.attention import scores
from synth_jax.attention.kernels import blockwise
from synth_jax.attention.kernels import flash
from synth_jax.attention.kernels import linear_scan
from synth_jax.attention.kernels import packed_gather
from synth_jax.attention.kernels import shared_scores

# How a run executes attention (`network.Transformer.attention_execution`):
#   'reference'         the core path only;
#   'fast'              plus the exact rewrites that run anywhere (shared scores, packed gather,
#                       linear attention's key sums);
#   'blockwise'         linear memory everywhere: linear attention's key sums, and every other
#                       variant through `blockwise.py` (the TPU v3 and long-context path);
#   'xla'               'fast' plus query-key forms through `jax.nn.dot_product_attention`'s
#                       XLA implementation;
#   'cudnn' / 'auto'    the fastest exact path that fits: query-key forms fused (cuDNN; 'auto'
#                       lets JAX choose), then the 'fast' rewrites (shared maps while they are
#                       within 4x of a layer's values), then blockwise.
EXECUTIONS = names.EXECUTIONS
SHARED_MAP_VALUES = 4  # a shared map's largest size, in the layer's values (`shared_map_fits`)


@dataclasses.dataclass(frozen=True)
class Dispatch:
  """`core.Attention.dispatch`: the fastest exact path for a call, or None for the reference.

  Attributes:
    fused: None, or the `jax.nn.dot_product_attention` implementation for query-key forms:
      'cudnn', 'xla' or 'auto'.
    blocked: whether what no fused kernel or 'fast' rewrite takes runs blockwise (and packed
      score tables too, instead of their `[batch, heads, q, k]` gather).
    block_size: queries and keys per block of the blockwise path.
  """
  fused: Optional[str] = None
  blocked: bool = False
  block_size: int = blockwise.DEFAULT_BLOCK

  @property
  def linear_memory(self) -> bool:
    """'blockwise': nothing quadratic in length, not even a batch-free table."""
    return self.blocked and self.fused is None

  def __call__(self, module: core.Attention, inputs_q, key_features, value, mask, bias,
               dropout=None):
    if mask.step is not None:  # one decode step: nothing to fuse
      return None
    if self.linear_memory and mask.explicit is not None:
      raise ValueError(
          f"{module.variant_name} attention: attention_execution='blockwise' has no path for a "
          'dense mask array (it would form the [batch, heads, q, k] scores blockwise avoids). '
          "Pass an attention.Mask (padding, segments, causal), or use attention_execution "
          "'fast' or 'reference'.")
    if dropout is not None:  # attention dropout: blockwise takes it, the other kernels do not
      if self.linear_memory:
        return self.blockwise_heads(module, inputs_q, key_features, value, mask, bias,
                                    dropout())
      return None
    q_len = inputs_q.shape[1]
    if module.kernel_features and linear_scan.applies(mask, q_len):
      log_q, log_k = module.feature_logs(inputs_q, key_features)
      return linear_scan.linear_attention(log_q, log_k, value, mask, module.chunk_size)
    # One batch-free softmax of a `[heads, q, k]` table: the fastest path for random
    # synthesizers, but quadratic in length, so 'blockwise' leaves it, and so do the others
    # where the table outgrows the layer's values (`shared_map_fits`).
    if (not self.linear_memory and module.shared_logits and (bias is None or bias.shape[0] == 1)
        and self.shared_map_fits(module, inputs_q.shape[1], value)):
      lengths = mask.lengths()
      if lengths is not None:
        logits = module.attention_logits(inputs_q, key_features, mask)
        return shared_scores.shared_scores_attention(logits, core.dense_bias(bias), lengths[1],
                                                     value, mask.causal)
    if module.query_key and self.fused and q_len > 1:
      queries, keys, scale = module.query_key_form(inputs_q, key_features, mask)
      implementation = None if self.fused == 'auto' else self.fused
      head_dim = max(queries.shape[-1], value.shape[-1])
      if flash.fits(head_dim, implementation):
        return flash.flash_attention(queries, keys, value, core.dense_bias(bias), mask, scale,
                                     implementation)
      flash.say_once(
          f'{module.variant_name} attention: head dimension {head_dim} is beyond the '
          f'fused kernel ({flash.CUDNN_MAX_HEAD_DIM}); it runs blockwise.')
      return self.attend_blockwise(scores.query_key(queries, keys, scale), value, mask, bias)
    if self.blocked and mask.explicit is None:
      return self.blockwise_heads(module, inputs_q, key_features, value, mask, bias)
    if module.shared_logits and mask.self_attention and mask.query_positions is not None:
      logits = packed_gather.gather_within_segments(module.score_table(), mask.query_positions)
      return core.mix(core.normalize(logits, mask.dense(), core.dense_bias(bias)), value)
    return None

  def shared_map_fits(self, module: core.Attention, q_len: int, value) -> bool:
    """Whether the batch-shared `[heads, q_len, k]` map may be formed: where it is at most
    `SHARED_MAP_VALUES` times the size of the layer's values `[batch, k, heads, head_dim]`
    (q_len <= 4 * batch * head_dim), or where no other path avoids it (a synthesizer without a
    query-key form under 'fast' or 'xla').

    A layer keeps a dozen tensors of about the values' size for its backward pass (queries,
    keys, values, output, norms, the MLP's wider hidden), so a map within 4x of it stays a
    fraction of the layer's memory: T5-base at 512 tokens and batch 128 (512 against 32768)
    keeps its map, at 8192 and batch 8 (8192 against 2048) it does not, where 12 layers' maps
    and probabilities asked for 70.5 GiB (BENCHMARKS.md, fourth run).
    """
    batch, _, _, head_dim = value.shape
    has_other_path = self.blocked or (module.query_key and self.fused is not None)
    return not has_other_path or q_len <= SHARED_MAP_VALUES * batch * head_dim

  def blockwise_heads(self, module, inputs_q, key_features, value, mask, bias, dropout=None):
    """The variant's `block_scores` through `blockwise.blockwise_attention`."""
    return self.attend_blockwise(
        module.block_scores(inputs_q, key_features, mask, self.block_size), value, mask, bias,
        dropout)

  def attend_blockwise(self, block: scores.Scores, value, mask, bias, dropout=None):
    """`block` plus the bias, blockwise."""
    if bias is not None:
      block = block.plus(scores.position_bias(bias, mask.query_valid.shape[1],
                                              mask.key_valid.shape[1]))
    return blockwise.blockwise_attention(block, value, mask, self.block_size, dropout)


def dispatch_for(execution: str, where: str = 'attention_execution') -> Optional[Dispatch]:
  """The `Dispatch` of a run option (`EXECUTIONS`); None for 'reference'."""
  if execution not in EXECUTIONS:
    raise ValueError(f'{where}={execution!r} is not an attention execution; use one of '
                     f'{", ".join(map(repr, EXECUTIONS))}.')
  if execution == 'reference':
    return None
  if execution in ('fast', 'blockwise'):
    return Dispatch(blocked=execution == 'blockwise')
  return Dispatch(fused=execution, blocked=execution != 'xla')
