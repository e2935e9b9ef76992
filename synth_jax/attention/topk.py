"""Top-k attention: each query keeps only its k largest dot-product scores (Zhao et al. 2019).

logits[b, h, i, j] = q_i . k_j if j is among the `top_k` visible keys of query i with the largest
q . k, else masked (-inf before the softmax). Selection reads the content score q . k (before the
relative-position bias); ties go to the lower key index (`jax.lax.top_k`), so the choice is
deterministic. The gradient reaches the kept scores only: routing, not a smooth choice.
"""
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import dot_product


class TopKAttention(dot_product.DotProductAttention):
  """Vanilla's parameters; `top_k` keys per query (all keys when there are fewer)."""
  top_k: int = 8

  variant_name = 'topk'
  query_key = False  # the selection is not a plain q.k product: no fused kernel

  def attention_logits(self, inputs_q, key_features, mask):
    if self.top_k < 1:
      raise ValueError(f'topk attention: top_k={self.top_k} must be >= 1 (gin '
                       "`T5Config.self_attention_options = {'top_k': ...}`).")
    logits = super().attention_logits(inputs_q, key_features, mask)
    visible = jnp.where(mask.dense(), logits, core.NEG_INF)
    k_len = logits.shape[-1]
    _, chosen = jax.lax.top_k(visible, min(self.top_k, k_len))
    kept = jnp.put_along_axis(jnp.zeros(logits.shape, bool), chosen, True, axis=-1,
                              inplace=False)
    return jnp.where(kept, logits, core.NEG_INF)
