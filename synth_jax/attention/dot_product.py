"""Vanilla multi-head dot-product attention, T5 conventions (Vaswani et al. 2017, eq. 1).

logits[b, h, i, j] = q[b, i, h] . k[b, j, h], with q = x W_Q and k = x W_K. T5 never divides by
sqrt(head_dim) at run time: the scale is folded into the query kernel's initializer, which is
equivalent under Adafactor. Parameter paths and axes equal T5X's: `query/kernel`, `key/kernel`,
`value/kernel` `('embed', 'joined_kv')` and `out/kernel` `('joined_kv', 'embed')`.
"""
from typing import Optional

import jax
import jax.numpy as jnp

from synth_jax.attention import core


def scaled_init(init, scale: float):
  return lambda *args: init(*args) * scale


class DotProductAttention(core.Attention):
  """T5 multi-head attention.

  Attributes:
    fused: None computes through the shared core. 'xla', 'cudnn' or 'auto' computes
      softmax(qk + bias) v with `jax.nn.dot_product_attention` (cuDNN flash attention on GPU;
      'auto' lets JAX choose). The fused path is used only without attention dropout.
  """
  fused: Optional[str] = None

  variant_name = 'vanilla'

  def key_features(self, inputs_kv):
    """Keys `[batch, k_len, heads, head_dim]`."""
    return self.projection('key', (self.num_heads, self.head_size(inputs_kv.shape[-1])))(inputs_kv)

  def queries(self, inputs_q):
    """Queries `[batch, q_len, heads, head_dim]`, scale 1/sqrt(head_dim) folded into the init."""
    head_dim = self.head_size(inputs_q.shape[-1])
    query_init = scaled_init(self.kernel_init, head_dim ** -0.5)
    return self.projection('query', (self.num_heads, head_dim), query_init)(inputs_q)

  def attention_logits(self, inputs_q, key_features, positions):
    return jnp.einsum('bqhd,bkhd->bhqk', self.queries(inputs_q), key_features,
                      preferred_element_type=jnp.float32)

  def check_lengths(self, query_length, key_length):
    """Dot-product attention has no maximum length."""

  def attend(self, inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
             segment_positions=None):
    if self.fused is None or (not deterministic and self.dropout_rate > 0):
      return super().attend(inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
                            segment_positions)
    keys, mask, bias, _ = self.scoring_inputs(inputs_q, inputs_kv, mask, bias, step,
                                              value.shape[1], decode)
    if bias is not None:
      bias = bias.astype(value.dtype)
    if mask is not None:
      mask = jnp.broadcast_to(mask > 0, mask.shape[:1] + (self.num_heads,) + mask.shape[2:])
    implementation = None if self.fused == 'auto' else self.fused
    return jax.nn.dot_product_attention(
        self.queries(inputs_q), keys, value, bias=bias, mask=mask, scale=1.0,
        implementation=implementation)
