"""Top-k attention: each query keeps only its k largest dot-product scores (Zhao et al. 2019).

logits[b, h, i, j] = q_i . k_j if j is among the `top_k` visible keys of query i with the largest
q . k, else masked (-inf before the softmax). Selection reads the content score q . k (before the
relative-position bias); ties go to the lower key index (as in `jax.lax.top_k`), so the choice is
deterministic. The gradient reaches the kept scores only: routing, not a smooth choice.

Blockwise (`block_scores`), a first pass over key blocks finds each query's k-th largest score
and where its ties end (`kernels.blockwise.row_top_k`); the attention pass then keeps a key when
its score is above that threshold, or equal to it at an index no later than the last tie chosen:
the same keys `jax.lax.top_k` keeps.
"""
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import dot_product
from synth_jax.attention import scores
from synth_jax.attention.kernels import blockwise
from synth_jax.attention.kernels import selection


class TopKAttention(dot_product.DotProductAttention):
  """Vanilla's parameters; `top_k` keys per query (all keys when there are fewer)."""
  top_k: int = 8

  variant_name = 'topk'
  query_key = False  # the selection is not a plain q.k product: no fused kernel

  def check_top_k(self):
    if self.top_k < 1:
      raise ValueError(f'topk attention: top_k={self.top_k} must be >= 1 (gin '
                       "`T5Config.self_attention_options = {'top_k': ...}`).")

  def block_scores(self, inputs_q, key_features, mask, block_size):
    self.check_top_k()
    content = scores.query_key(*self.query_key_form(inputs_q, key_features, mask))
    k_len = mask.key_valid.shape[1]
    threshold, last = blockwise.row_top_k(content, mask, min(self.top_k, k_len), core.NEG_INF,
                                          block_size)
    score = content.function

    def function(params, query, key):
      (q, threshold, last), (k, key_index) = query, key
      s = score(params, q, k)
      threshold = jnp.transpose(threshold, (0, 2, 1))[..., None]  # [b, h, q, 1]
      last = jnp.transpose(last, (0, 2, 1))[..., None]
      kept = (s > threshold) | ((s == threshold) & (key_index[:, None, None, :] <= last))
      return jnp.where(kept, s, core.NEG_INF)
    return scores.Scores(function, content.params, (content.query, threshold, last),
                         (content.key, jnp.arange(k_len, dtype=jnp.int32)[None]))

  def attention_logits(self, inputs_q, key_features, mask):
    self.check_top_k()
    logits = super().attention_logits(inputs_q, key_features, mask)
    visible = jnp.where(mask.dense(), logits, core.NEG_INF)
    k_len = logits.shape[-1]
    _, chosen = selection.top_k(visible, min(self.top_k, k_len))
    kept = jnp.put_along_axis(jnp.zeros(logits.shape, bool), chosen, True, axis=-1,
                              inplace=False)
    return jnp.where(kept, logits, core.NEG_INF)
