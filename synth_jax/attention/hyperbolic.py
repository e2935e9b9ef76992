"""Hyperbolic attention: similarity as closeness on a Poincare ball (Gulcehre et al. 2019).

Queries and keys are mapped onto the ball of curvature -c (c > 0 learned per head) by the
exponential map at the origin, exp_0(v) = tanh(sqrt(c) |v|) v / (sqrt(c) |v|), and compared by
geodesic distance

    d_c(x, y) = arcosh(1 + 2c |x - y|^2 / ((1 - c|x|^2) (1 - c|y|^2))) / sqrt(c),

logits = -d_c(q_i, k_j) / tau_h with a learned per-head temperature tau_h > 0. |x - y|^2 is
expanded as |x|^2 + |y|^2 - 2 x.y, so no `[q, k, head_dim]` tensor is formed. Everything inside
runs in float32; points stay inside the boundary (c|x|^2 <= 1 - 2.5e-5), 1 - c|x|^2 is computed
without cancellation, and arcosh's argument stays >= 1 + 1e-7 (its derivative is infinite at 1),
so distances and gradients stay finite.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import scores

# exp_0 takes sqrt(c)|v| <= 6 (c|x|^2 = tanh^2 <= 1 - 2.5e-5): points stay inside the ball.
MAX_RAPIDITY = 6.0
ARCOSH_MARGIN = 1e-7


def softplus_inverse(y: float) -> float:
  return math.log(math.expm1(y))


def exp_map_origin(v, c):
  """exp_0(v) on the ball of curvature -c, and 1 - c|exp_0(v)|^2: `[..., heads, dim]`, c `[heads]`.

  1 - c|x|^2 = 1 - tanh^2(u) = 1 / cosh^2(u) for u = sqrt(c)|v|: computed from u directly, it
  keeps its relative precision near the boundary, where 1 - (rounded c|x|^2) would not.
  """
  sqrt_c = jnp.sqrt(c)[:, None]
  norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
  rapidity = jnp.minimum(sqrt_c * norm, MAX_RAPIDITY)
  point = jnp.tanh(rapidity) * v / (sqrt_c * norm)
  return point, 1.0 / jnp.cosh(rapidity[..., 0]) ** 2


def poincare_distance(x, x_gap, y, y_gap, c):
  """d_c between every query `[b, q, h, d]` and key `[b, k, h, d]`: `[b, h, q, k]`.

  x_gap, y_gap: `[b, len, h]` 1 - c|x|^2 of each point (`exp_map_origin`).
  """
  x_sq = jnp.einsum('bqhd,bqhd->bhq', x, x)[..., :, None]
  y_sq = jnp.einsum('bkhd,bkhd->bhk', y, y)[..., None, :]
  diff_sq = jnp.maximum(x_sq + y_sq - 2.0 * jnp.einsum('bqhd,bkhd->bhqk', x, y), 0.0)
  gaps = jnp.einsum('bqh,bkh->bhqk', x_gap, y_gap)
  c = c[None, :, None, None]
  r = jnp.maximum(2.0 * c * diff_sq / gaps, ARCOSH_MARGIN)
  # arcosh(1 + r) = log1p(r + sqrt(r (r + 2))): no cancellation near r = 0 (nearby points).
  return jnp.log1p(r + jnp.sqrt(r * (r + 2.0))) / jnp.sqrt(c)


def negative_distance(params, query, key):
  """-d_c(q_i, k_j) / tau `[b, h, q, k]`; params (c, tau) `[heads]`, query/key (point, gap)."""
  c, temperature = params
  return -poincare_distance(*query, *key, c) / temperature[None, :, None, None]


class HyperbolicAttention(core.Attention):
  """`query`, `key` kernels as vanilla's; `curvature`, `temperature` `[heads]` (softplus-param).

  Attributes:
    init_curvature: c at init (1: the unit ball).
    init_temperature: tau at init.
  """
  init_curvature: float = 1.0
  init_temperature: float = 1.0

  variant_name = 'hyperbolic'
  length_bounded = False  # logits from the tokens: any length

  def positive(self, name: str, init_value: float):
    raw = self.param(name, nn.with_logical_partitioning(
        nn.initializers.constant(softplus_inverse(init_value)), ('heads',)),
                     (self.num_heads,), jnp.float32)
    return jax.nn.softplus(raw) + 1e-6

  def key_features(self, inputs_kv):
    return self.projection('key', inputs_kv.shape[-1])(inputs_kv)

  def block_scores(self, inputs_q, key_features, mask, block_size):
    """Points on the ball (and their gaps 1 - c|x|^2) per token; -d_c / tau per block."""
    c = self.positive('curvature', self.init_curvature)
    q = self.projection('query', inputs_q.shape[-1])(inputs_q).astype(jnp.float32)
    temperature = self.positive('temperature', self.init_temperature)
    return scores.Scores(negative_distance, (c, temperature), exp_map_origin(q, c),
                         exp_map_origin(key_features.astype(jnp.float32), c))

  def attention_logits(self, inputs_q, key_features, mask):
    block = self.block_scores(inputs_q, key_features, mask, block_size=0)
    return block.function(block.params, block.query, block.key)
