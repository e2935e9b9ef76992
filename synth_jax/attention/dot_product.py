"""Vanilla multi-head dot-product attention, T5 conventions (Vaswani et al. 2017, eq. 1).

logits[b, h, i, j] = q[b, i, h] . k[b, j, h], with q = x W_Q and k = x W_K. T5 never divides by
sqrt(head_dim) at run time: the scale is folded into the query kernel's initializer. Both give
the same function at init, and they train alike under Adafactor, whose steps are relative to a
parameter's scale. Under Adam they do not: a step moves each weight by about the learning rate
whatever its size, so a query kernel drawn sqrt(head_dim) times smaller changes sqrt(head_dim)
times faster relative to itself, and so do the logits. `fold_query_scale=False` keeps the query
kernel at the key's scale and multiplies the logits by 1/sqrt(head_dim) (Vaswani et al.): the
diagnostics, trained with AdamW, use it. Parameter paths and axes equal T5X's: `query/kernel`,
`key/kernel`, `value/kernel` `('embed', 'joined_kv')` and `out/kernel` `('joined_kv', 'embed')`.

`QueryKeyAttention` is the base of every variant whose logits are scaled query.key products
(vanilla, orthogonal): it declares `query_key`, so a run may compute it fused
(`kernels/flash.py`).
"""
import jax.numpy as jnp

from synth_jax.attention import core


def scaled_init(init, scale: float):
  return lambda *args: init(*args) * scale


class QueryKeyAttention(core.Attention):
  """Logits `logit_scale(head_dim) * queries . keys`; subclasses say how both are projected.

  `key_features` are the projected keys (cached while decoding); `keys` may still transform
  them at the positions the mask gives (rotary embeddings do).
  """
  query_key = True
  length_bounded = False  # logits from the tokens: any length

  def queries(self, inputs_q, mask):
    """Queries `[batch, q_len, heads, head_dim]`."""
    raise NotImplementedError

  def keys(self, key_features, mask):
    """Keys `[batch, k_len, heads, head_dim]` from the (cached) key features."""
    return key_features

  def logit_scale(self, head_dim: int) -> float:
    return 1.0

  def query_key_form(self, inputs_q, key_features, mask):
    return (self.queries(inputs_q, mask), self.keys(key_features, mask),
            self.logit_scale(key_features.shape[-1]))

  def attention_logits(self, inputs_q, key_features, mask):
    logits = jnp.einsum('bqhd,bkhd->bhqk', self.queries(inputs_q, mask),
                        self.keys(key_features, mask), preferred_element_type=jnp.float32)
    scale = self.logit_scale(key_features.shape[-1])
    return logits if scale == 1.0 else logits * scale


class DotProductAttention(QueryKeyAttention):
  """T5 multi-head attention (see the module docstring)."""
  variant_name = 'vanilla'

  def key_features(self, inputs_kv):
    """Keys `[batch, k_len, heads, head_dim]`."""
    return self.projection('key', inputs_kv.shape[-1])(inputs_kv)

  def queries(self, inputs_q, mask):
    """Queries `[batch, q_len, heads, head_dim]`; with `fold_query_scale`, the kernel's init
    carries the 1/sqrt(head_dim) scale."""
    embed = inputs_q.shape[-1]
    query_init = self.kernel_init
    if self.fold_query_scale:
      query_init = scaled_init(query_init, self.head_size(embed) ** -0.5)
    return self.projection('query', embed, kernel_init=query_init)(inputs_q)

  def logit_scale(self, head_dim: int) -> float:
    return 1.0 if self.fold_query_scale else head_dim ** -0.5
