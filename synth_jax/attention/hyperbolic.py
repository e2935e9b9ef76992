"""Hyperbolic attention: similarity as closeness on a Poincare ball (Gulcehre et al. 2019).

Queries and keys are mapped onto the ball of curvature -c (c > 0 learned per head) by the
exponential map at the origin, exp_0(v) = tanh(u) v / (sqrt(c) |v|) with rapidity
u = sqrt(c) |v|, and compared by geodesic distance

    d_c(x, y) = arcosh(1 + r) / sqrt(c),   r = 2c |x - y|^2 / ((1 - c|x|^2) (1 - c|y|^2)),

logits = -d_c(q_i, k_j) / tau_h with a learned per-head temperature tau_h > 0. In the rapidities
u, w of two points and the angle theta between them (c|x|^2 = tanh^2 u, 1 - c|x|^2 = 1/cosh^2 u),

    r = 2 sinh^2 u cosh^2 w + 2 cosh^2 u sinh^2 w - sinh 2u sinh 2w cos theta,

one dot product of per-token features `ball_query_features` . `ball_key_features` (head_dim + 2
wide): the logits are a matmul, an arcosh and a per-head scale 1 / (sqrt(c) tau), and their backward
pass is the matmul's (no per-pair norms or gaps to reduce). No `[q, k, head_dim]` tensor is
formed. Everything runs in float32 (features reach 2 cosh^2 6 ~ 8e4); the rounding error of r is
that of the textbook form, about eps cosh^2 u cosh^2 w (tests/attention/test_hyperbolic.py).
Points stay inside the boundary (u <= 6, c|x|^2 <= 1 - 2.5e-5) and arcosh's argument stays
>= 1 + 1e-7 (its derivative is infinite at 1), so distances and gradients stay finite. On GPUs a
float32 matmul at JAX's default precision runs in TF32, here as in every float32 logit.
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


def rapidity(v, c):
  """u = min(sqrt(c)|v|, MAX_RAPIDITY) `[..., heads, 1]` and v / |v| of `v` `[..., heads, dim]`."""
  norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
  return jnp.minimum(jnp.sqrt(c)[:, None] * norm, MAX_RAPIDITY), v / norm


def ball_query_features(v, c):
  """`[2 sinh^2 u, 2 cosh^2 u, -2 sinh 2u v/|v|]` `[..., heads, dim + 2]` of exp_0(v)."""
  u, direction = rapidity(v, c)
  sinh_sq = jnp.sinh(u) ** 2
  return jnp.concatenate([2 * sinh_sq, 2 * (1 + sinh_sq), -2 * jnp.sinh(2 * u) * direction], -1)


def ball_key_features(v, c):
  """`[cosh^2 w, sinh^2 w, sinh 2w / 2 v/|v|]` `[..., heads, dim + 2]` of exp_0(v)."""
  w, direction = rapidity(v, c)
  sinh_sq = jnp.sinh(w) ** 2
  return jnp.concatenate([1 + sinh_sq, sinh_sq, 0.5 * jnp.sinh(2 * w) * direction], -1)


def negative_distance(scale, query, key):
  """-scale_h arcosh(1 + r) `[b, h, q, k]` of features `[b, q|k, h, dim + 2]`; scale `[heads]`."""
  r = jnp.maximum(jnp.einsum('bqhd,bkhd->bhqk', query, key), ARCOSH_MARGIN)
  # arcosh(1 + r) = log1p(r + sqrt(r (r + 2))): no cancellation near r = 0 (nearby points).
  return -scale[None, :, None, None] * jnp.log1p(r + jnp.sqrt(r * (r + 2.0)))


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
    """Each token's ball features (head_dim + 2 wide); -d_c / tau per block."""
    c = self.positive('curvature', self.init_curvature)
    q = self.projection('query', inputs_q.shape[-1])(inputs_q).astype(jnp.float32)
    temperature = self.positive('temperature', self.init_temperature)
    return scores.Scores(negative_distance, 1.0 / (jnp.sqrt(c) * temperature),
                         ball_query_features(q, c),
                         ball_key_features(key_features.astype(jnp.float32), c))

  def attention_logits(self, inputs_q, key_features, mask):
    block = self.block_scores(inputs_q, key_features, mask, block_size=0)
    return block.function(block.params, block.query, block.key)
