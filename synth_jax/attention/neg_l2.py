"""Negative squared-L2 attention: similarity as closeness, an RBF kernel over queries and keys.

logits[b, h, i, j] = -|q_i - k_j|^2 / (2 sqrt(head_dim))
                   = (2 q_i.k_j - |q_i|^2 - |k_j|^2) / (2 sqrt(head_dim)),
expanded so no `[q, k, head_dim]` difference tensor is formed. The |q_i|^2 term shifts a whole
softmax row and cancels in the probabilities; it is kept so the logits are the distance itself.
softmax over these logits is a normalized Gaussian kernel exp(-|q - k|^2 / (2 sqrt(d))): a key
wins by being near the query, not by being long (Tsai et al. 2019 compare such kernels).

Up to the row constant -|q_i|^2 / (2 sqrt(d)), the logits are a scaled dot product,

    (q_i . k_j - |k_j|^2 / 2) / sqrt(d) = [q_i, 1, 1] . [k_j, c_j, c'_j] / sqrt(d),

with -|k_j|^2 / 2 = c_j + c'_j split into its activation-dtype rounding and the rest, so that in
bfloat16 the extra column keeps float32's precision: the query-key form that runs on the fused
kernel (`query_key_form`).
"""
import jax.numpy as jnp

from synth_jax.attention import core


class NegativeL2Attention(core.Attention):
  """`query`, `key` kernels `[embed, heads * head_dim]` as vanilla's (T5X names and axes)."""
  variant_name = 'neg_l2'
  query_key = True
  length_bounded = False  # logits from the tokens: any length

  def key_features(self, inputs_kv):
    return self.projection('key', inputs_kv.shape[-1])(inputs_kv)

  def query_key_form(self, inputs_q, key_features, mask):
    q = self.projection('query', inputs_q.shape[-1])(inputs_q)
    k = key_features
    half_norm = -0.5 * jnp.sum(jnp.square(k.astype(jnp.float32)), axis=-1, keepdims=True)
    high = half_norm.astype(k.dtype)
    low = (half_norm - high.astype(jnp.float32)).astype(k.dtype)
    queries = jnp.concatenate([q, jnp.ones(q.shape[:-1] + (2,), q.dtype)], axis=-1)
    keys = jnp.concatenate([k, high, low], axis=-1)
    return queries, keys, k.shape[-1] ** -0.5

  def attention_logits(self, inputs_q, key_features, mask):
    q = self.projection('query', inputs_q.shape[-1])(inputs_q).astype(jnp.float32)
    k = key_features.astype(jnp.float32)
    cross = jnp.einsum('bqhd,bkhd->bhqk', q, k)
    q_norms = jnp.einsum('bqhd,bqhd->bhq', q, q)[..., :, None]
    k_norms = jnp.einsum('bkhd,bkhd->bhk', k, k)[..., None, :]
    return (2.0 * cross - q_norms - k_norms) / (2.0 * q.shape[-1] ** 0.5)
