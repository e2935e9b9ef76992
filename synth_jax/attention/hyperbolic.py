"""Hyperbolic attention: similarity as closeness on a Poincare ball (Gulcehre et al. 2019).

Queries and keys are mapped onto the ball of curvature -c (c > 0 learned per head) by the
exponential map at the origin, exp_0(v) = tanh(u) v / (sqrt(c) |v|) with rapidity
u = sqrt(c) |v|, and compared by geodesic distance

    d_c(x, y) = arcosh(1 + r) / sqrt(c),   r = 2c |x - y|^2 / ((1 - c|x|^2) (1 - c|y|^2)),

logits = -d_c(q_i, k_j) / tau_h with a learned per-head temperature tau_h > 0. In the rapidities
u, w of two points, their directions d, e (unit vectors) and c|x|^2 = tanh^2 u,
1 - c|x|^2 = 1/cosh^2 u,

    r = 2 sinh^2(u - w) + sinh 2u sinh 2w |d - e|^2 / 2,

and both terms expand into one dot product of per-token features, `ball_query_features` .
`ball_key_features` (head_dim + 5 wide): 2 sinh^2(u - w) from sinh u, cosh u and their products,
|d - e|^2 from |d|^2 + |e|^2 - 2 d.e with the rounded |d|^2, so that for nearby points the terms
cancel as they would in the points' own coordinates. The logits are a matmul, an arcosh and a
per-head scale 1 / (sqrt(c) tau), and their backward pass is the matmul's (no per-pair norms or
gaps to reduce). The features are made per block from the projections (`block_logits`), so
the blockwise path keeps the bf16 projections for its backward pass, not the features. No
`[q, k, head_dim]` tensor is formed. Everything past the projections runs in float32 (features
reach 2 cosh^2 6 ~ 8e4); near the boundary the error is that of the expanded form
|x|^2 + |y|^2 - 2 x.y (tests/attention/test_hyperbolic.py), which any matmul form shares.
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


def _rapidity_terms(v, c):
  """sinh u, cosh u, sinh 2u (from the same two, so that terms meant to cancel do), v/|v| and
  |v/|v||^2 as rounded, of `v` `[..., heads, dim]`, u = min(sqrt(c)|v|, MAX_RAPIDITY)."""
  norm = jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-12)
  u, direction = jnp.minimum(jnp.sqrt(c)[:, None] * norm, MAX_RAPIDITY), v / norm
  sinh, cosh = jnp.sinh(u), jnp.cosh(u)
  return sinh, cosh, 2 * sinh * cosh, direction, jnp.sum(direction * direction, -1, keepdims=True)


def ball_query_features(v, c):
  """`[..., heads, dim + 5]` of exp_0(v): `[2 sinh^2 u, 2 cosh^2 u, -4 sinh u cosh u,
  sinh 2u |d|^2 / 2, sinh 2u / 2, -sinh 2u d]`, d = v/|v|."""
  sinh, cosh, sinh2, direction, norm_sq = _rapidity_terms(v, c)
  return jnp.concatenate([2 * sinh * sinh, 2 * cosh * cosh, -4 * sinh * cosh,
                          sinh2 * norm_sq / 2, sinh2 / 2, -sinh2 * direction], -1)


def ball_key_features(v, c):
  """`[..., heads, dim + 5]` of exp_0(v): `[cosh^2 w, sinh^2 w, sinh w cosh w, sinh 2w,
  sinh 2w |d|^2, sinh 2w d]`, d = v/|v|."""
  sinh, cosh, sinh2, direction, norm_sq = _rapidity_terms(v, c)
  return jnp.concatenate([cosh * cosh, sinh * sinh, sinh * cosh, sinh2, sinh2 * norm_sq,
                          sinh2 * direction], -1)


def negative_distance(scale, query, key):
  """-scale_h arcosh(1 + r) `[b, h, q, k]` of features `[b, q|k, h, dim + 5]`; scale `[heads]`."""
  r = jnp.maximum(jnp.einsum('bqhd,bkhd->bhqk', query, key), ARCOSH_MARGIN)
  # arcosh(1 + r) = log1p(r + sqrt(r (r + 2))): no cancellation near r = 0 (nearby points).
  return -scale[None, :, None, None] * jnp.log1p(r + jnp.sqrt(r * (r + 2.0)))


def block_logits(params, query, key):
  """`Scores.function`: -d_c / tau `[b, h, q, k]` of projected queries and keys
  `[b, q|k, h, dim]`; params (scale `[heads]`, c `[heads]`). The features are made here, per
  block: the blockwise path keeps the projections (bf16) for its backward pass, not the float32
  features (2.2x their bytes at head_dim 64), and recomputes the features of each block."""
  scale, c = params
  return negative_distance(scale, ball_query_features(query.astype(jnp.float32), c),
                           ball_key_features(key.astype(jnp.float32), c))


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
    """-d_c / tau per block of the projected queries and keys (`block_logits`)."""
    c = self.positive('curvature', self.init_curvature)
    q = self.projection('query', inputs_q.shape[-1])(inputs_q)
    temperature = self.positive('temperature', self.init_temperature)
    return scores.Scores(block_logits, (1.0 / (jnp.sqrt(c) * temperature), c), q, key_features)

  def attention_logits(self, inputs_q, key_features, mask):
    block = self.block_scores(inputs_q, key_features, mask, block_size=0)
    return block.function(block.params, block.query, block.key)
