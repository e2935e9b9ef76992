"""Vanilla multi-head dot-product attention, T5 conventions (Vaswani et al. 2017, eq. 1).

logits[b, h, i, j] = q[b, i, h] . k[b, j, h], with q = x W_Q and k = x W_K. T5 never divides by
sqrt(head_dim) at run time: the scale is folded into the query kernel's initializer, which is
equivalent under Adafactor. Parameter paths and axes equal T5X's: `query/kernel`, `key/kernel`,
`value/kernel` `('embed', 'joined_kv')` and `out/kernel` `('joined_kv', 'embed')`.

`QueryKeyAttention` is the shared base of the variants whose logits are query.key products
(vanilla, orthogonal): they can run fused (`fused.flash_attention`, cuDNN on GPU).
"""
from typing import Optional

import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import fused as fused_lib


def scaled_init(init, scale: float):
  return lambda *args: init(*args) * scale


class QueryKeyAttention(core.Attention):
  """Attention with logits `scale * q . k`; subclasses say how queries and keys are projected.

  Attributes:
    fused: None computes through the shared core. 'cudnn', 'xla' or 'auto' computes
      softmax(q k^T scale + bias) v with `jax.nn.dot_product_attention` (cuDNN flash attention
      on GPU; 'auto' lets JAX choose), without attention dropout or single-position queries
      (decode steps; those take the core path). Fastest with `lengths` (unpacked batches):
      packed batches fold their dense mask into a `[batch, heads, q, k]` bias.
  """
  fused: Optional[str] = None

  def queries(self, inputs_q):
    """Queries `[batch, q_len, heads, head_dim]`."""
    raise NotImplementedError

  def logit_scale(self, head_dim: int) -> float:
    return 1.0

  def attention_logits(self, inputs_q, key_features, positions):
    scale = self.logit_scale(key_features.shape[-1])
    logits = jnp.einsum('bqhd,bkhd->bhqk', self.queries(inputs_q), key_features,
                        preferred_element_type=jnp.float32)
    return logits if scale == 1.0 else logits * scale

  def check_lengths(self, query_length, key_length):
    """Dot-product attention has no maximum length."""

  def attend(self, inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
             segment_positions=None, lengths=None, segments=None):
    dropout = not deterministic and self.dropout_rate > 0
    single_query = inputs_q.shape[1] == 1  # decoding: nothing to fuse
    if self.fused is None or dropout or step is not None or single_query:
      return super().attend(inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
                            segment_positions, lengths, segments)
    fused_lib.check_implementation(self.fused, f'{self.variant_name} attention option fused')
    keys, mask, bias, _ = self.scoring_inputs(inputs_q, inputs_kv, mask, bias, step,
                                              value.shape[1], decode)
    return fused_lib.flash_attention(
        self.queries(inputs_q), keys, value, bias, mask, lengths,
        scale=self.logit_scale(keys.shape[-1]),
        implementation=None if self.fused == 'auto' else self.fused)


class DotProductAttention(QueryKeyAttention):
  """T5 multi-head attention (see the module docstring)."""
  variant_name = 'vanilla'

  def key_features(self, inputs_kv):
    """Keys `[batch, k_len, heads, head_dim]`."""
    return self.projection('key', (self.num_heads, self.head_size(inputs_kv.shape[-1])))(inputs_kv)

  def queries(self, inputs_q):
    """Queries `[batch, q_len, heads, head_dim]`, scale 1/sqrt(head_dim) folded into the init."""
    head_dim = self.head_size(inputs_q.shape[-1])
    query_init = scaled_init(self.kernel_init, head_dim ** -0.5)
    return self.projection('query', (self.num_heads, head_dim), query_init)(inputs_q)
