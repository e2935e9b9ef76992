"""Cosine attention (Swin Transformer v2, Liu et al. 2022, eq. 2; QK-norm).

logits[b, h, i, j] = s_h * cos(q_i, k_j) = s_h * (q_i / |q_i|) . (k_j / |k_j|), with a learned
per-head scale s_h = exp(min(log_scale_h, log 100)): log-parameterized and clamped as Swin v2 does,
so magnitudes can no longer win the softmax and the logits stay within [-100, 100]. The scale
starts at sqrt(head_dim): cosines of random vectors spread as 1/sqrt(head_dim), so initial logits
spread as vanilla attention's do (std ~1). It is folded into the queries, so the logits are a
plain q.k product and can run fused like vanilla attention.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import dot_product

MAX_LOG_SCALE = math.log(100.0)


def unit(x, eps=1e-6):
  """`x` over its last axis's L2 norm, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class CosineAttention(dot_product.QueryKeyAttention):
  """`query`, `key` kernels as vanilla's; `logit_scale` `[heads]` (log of s_h)."""
  variant_name = 'cosine'

  def scale(self, head_dim: int):
    """s_h `[heads]`."""
    log_scale = self.param(
        'logit_scale',
        nn.with_logical_partitioning(nn.initializers.constant(0.5 * math.log(head_dim)),
                                     ('heads',)),
        (self.num_heads,), jnp.float32)
    return jnp.exp(jnp.minimum(log_scale, MAX_LOG_SCALE))

  def key_features(self, inputs_kv):
    return unit(self.projection('key', inputs_kv.shape[-1])(inputs_kv)).astype(self.dtype)

  def queries(self, inputs_q, mask):
    q = unit(self.projection('query', inputs_q.shape[-1])(inputs_q))
    return (q * self.scale(q.shape[-1])[:, None]).astype(self.dtype)
