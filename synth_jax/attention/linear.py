"""Linear attention: softmax's kernel replaced by a feature-map product (Katharopoulos et al. 2020).

With phi(q) . phi(k) in place of exp(q . k / sqrt(head_dim)), attention is

    out_i = phi(q_i) . sum_j phi(k_j) v_j^T  /  phi(q_i) . sum_j phi(k_j)

and the key sums are a `[heads, m, head_dim]` matrix however long the row: O(length) memory
(`kernels/linear_scan.py`), and decoding keeps that sum as a fixed-size recurrent state instead
of a growing key/value cache.

feature_map='favor' (Performer, Choromanski et al. 2021, Lemma 1 and Sec. 2.4): positive
  orthogonal random features phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m) with x' = x / head_dim^(1/4),
  so E[phi(q) . phi(k)] = exp(q . k / sqrt(head_dim)), softmax attention's kernel. W
  `[heads, m, head_dim]` is drawn once per head as orthogonal blocks of head_dim rows rescaled to
  chi(head_dim) norms, and frozen (the 'frozen' collection: no gradient, no optimizer state).
feature_map='elu': phi(x) = elu(x) + 1 (Katharopoulos et al. 2020, Sec. 3.2.1); no random features.

The reference path returns logits log(phi(q) . phi(k)), so the core's masked softmax is exactly
the normalized kernel. Two consequences of the kernel form:
  * no T5 relative-position bias (`position_bias = False`): a bias on the logits multiplies the
    kernel by a [q, k] matrix that does not factor into phi(q) . phi(k), so the sums above could not
    be formed; a stack of linear attention builds no `relpos_bias` table.
  * attention dropout drops entries of the probabilities, which the linear form never builds:
    training with `dropout_rate` > 0 takes the blockwise path under 'blockwise' (logits
    log(phi(q) . phi(k)) block by block), the quadratic reference path otherwise.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import scores
from synth_jax.attention.kernels import linear_scan

AXIS_RULES = {'linear_features': core.AxisRule(None, 'none')}
FEATURE_MAPS = ('favor', 'elu')


def orthogonal_random_features(key, shape, dtype=jnp.float32):
  """W `[heads, m, head_dim]`: per head, blocks of head_dim orthogonal rows, chi(head_dim) norms.

  Orthogonal rows lower the estimator's variance below i.i.d. Gaussian rows (Performer Sec. 2.4);
  rescaling each row to the norm of a Gaussian vector keeps every row's marginal N(0, I), which
  the unbiasedness E[exp(w . x)] = exp(|x|^2 / 2) needs.
  """
  heads, features, head_dim = shape
  blocks = -(-features // head_dim)
  direction_key, norm_key = jax.random.split(key)
  q, r = jnp.linalg.qr(jax.random.normal(direction_key, (heads, blocks, head_dim, head_dim)))
  # Sign-fixed so each block is Haar-distributed rather than biased by QR's convention.
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]
  rows = jnp.swapaxes(q, -1, -2).reshape(heads, blocks * head_dim, head_dim)[:, :features]
  norms = jnp.linalg.norm(jax.random.normal(norm_key, shape), axis=-1, keepdims=True)
  return (rows * norms).astype(dtype)


def kernel_logits(params, log_q, log_k):
  """log(phi(q) . phi(k)) `[batch, heads, q_len, k_len]` from log-features `[batch, len, heads, m]`,
  without a `[.., q, k, m]` tensor."""
  del params
  # log sum_r exp(a_r + b_r) = log sum_r exp(a_r - A) exp(b_r - B) + A + B with A, B each side's
  # largest log-feature: the exps stay <= 1. A sum below float32's smallest normal (features
  # e^-87 apart) is clamped there rather than giving log(0).
  q_max = jax.lax.stop_gradient(jnp.max(log_q, axis=-1, keepdims=True))
  k_max = jax.lax.stop_gradient(jnp.max(log_k, axis=-1, keepdims=True))
  kernel = jnp.einsum('bqhr,bkhr->bhqk', jnp.exp(log_q - q_max), jnp.exp(log_k - k_max))
  kernel = jnp.maximum(kernel, jnp.finfo(jnp.float32).tiny)
  return (jnp.log(kernel) + jnp.transpose(q_max, (0, 2, 1, 3))
          + jnp.transpose(k_max, (0, 2, 3, 1)))


class LinearAttention(core.Attention):
  """`query`, `key` kernels as vanilla's; FAVOR+ `random_features` `[heads, m, head_dim]` frozen.

  Attributes:
    feature_map: 'favor' (positive orthogonal random features) or 'elu' (elu + 1).
    num_features: m, the number of random features per head ('favor' only).
    chunk_size: tokens per step of the causal prefix-sum scan (`kernels/linear_scan.py`).
  """
  feature_map: str = 'favor'
  num_features: int = 64
  chunk_size: int = 64

  variant_name = 'linear'
  axis_rules = AXIS_RULES
  position_bias = False
  # `feature_logs()` gives log phi(q), log phi(k): `kernels/linear_scan.py` computes the heads
  # from them in O(length).
  kernel_features = True
  length_bounded = False  # logits from the tokens: any length

  def key_features(self, inputs_kv):
    """Keys `[batch, k_len, heads, head_dim]`."""
    return self.projection('key', inputs_kv.shape[-1])(inputs_kv)

  def queries(self, inputs_q):
    return self.projection('query', inputs_q.shape[-1])(inputs_q)

  def random_features(self, head_dim: int):
    shape = (self.num_heads, self.num_features, head_dim)
    init = nn.with_logical_partitioning(orthogonal_random_features,
                                        ('heads', 'linear_features', 'kv'))
    features = self.variable(core.FROZEN, 'random_features',
                             lambda: init(self.make_rng('params'), shape)).value
    return jax.lax.stop_gradient(features)

  def feature_logs(self, inputs_q, key_features):
    """(log phi(q), log phi(k)): `[batch, len, heads, m]` float32 each.

    In logs because phi spans e^(+-100) for large inputs: each consumer shifts them into range.
    """
    if self.feature_map not in FEATURE_MAPS:
      raise ValueError(f'linear attention: feature_map={self.feature_map!r} is not one of '
                       f'{FEATURE_MAPS} (gin `T5Config.self_attention_options`).')
    queries = self.queries(inputs_q).astype(jnp.float32)
    keys = key_features.astype(jnp.float32)
    if self.feature_map == 'elu':
      # log(elu(x) + 1) is x itself below 0: no exp that could underflow to a log(0).
      log_elu = lambda x: jnp.where(x > 0, jnp.log1p(jnp.maximum(x, 0.0)), x)
      return log_elu(queries), log_elu(keys)
    w = self.random_features(queries.shape[-1])

    def log_favor(x):
      x = x * x.shape[-1] ** -0.25
      return (jnp.einsum('blhd,hrd->blhr', x, w) - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)
              - 0.5 * math.log(self.num_features))
    return log_favor(queries), log_favor(keys)

  def attention_logits(self, inputs_q, key_features, mask):
    """log(phi(q) . phi(k)) `[batch, heads, q_len, k_len]`, without a `[.., q, k, m]` tensor."""
    return kernel_logits((), *self.feature_logs(inputs_q, key_features))

  def block_scores(self, inputs_q, key_features, mask, block_size):
    return scores.Scores(kernel_logits, (), *self.feature_logs(inputs_q, key_features))

  # -- decoding: a recurrent state, not a key/value cache --------------------------------------
  def cached(self, name, new, mask, decode):
    """No growing key or value cache: `recurrent_step` keeps the key sums instead."""
    return new

  @core.creates_variables
  def mix_heads(self, inputs_q, inputs_kv, value, mask, bias, *, decode=False,
                deterministic=True, dropout_multipliers=None):
    if decode:
      step = self.recurrent_step(inputs_q, inputs_kv, value, mask)
      if step is not None:
        return step
    return super().mix_heads(inputs_q, inputs_kv, value, mask, bias, decode=decode,
                             deterministic=deterministic, dropout_multipliers=dropout_multipliers)

  def recurrent_step(self, inputs_q, inputs_kv, value, mask):
    """While decoding, the heads of one step from the state of the keys so far; None otherwise.

    The cache-creating call creates the state (and returns None: it runs the full forward):
    `key_value_sum` S `[batch, heads, m, head_dim]` = sum_j phi(k_j) v_j^T, `key_sum` z
    `[batch, heads, m]` = sum_j phi(k_j), both relative to `key_max` c `[batch, heads, m]`, the
    largest key log-feature so far (as `linear_scan.shifted_features`, kept online: when c grows,
    S and z are rescaled by exp(c_old - c_new), as an online softmax rescales its sum).
    """
    batch, head_dim = inputs_q.shape[0], value.shape[-1]
    count = head_dim if self.feature_map == 'elu' else self.num_features
    state = lambda name, fill, *shape: self.variable(
        core.CACHE, name, lambda: jnp.full((batch, self.num_heads) + shape, fill, jnp.float32))
    kv_sum = state('key_value_sum', 0.0, count, head_dim)
    k_sum = state('key_sum', 0.0, count)
    k_max = state('key_max', core.NEG_INF, count)
    if mask.step is None:
      return None
    if mask.explicit is not None:
      raise ValueError('linear attention keeps a sum over past keys while decoding, so a decode '
                       'step cannot take a dense mask; give padding through an attention.Mask.')
    if value.shape[1] != 1:  # a mixture's cached values: this step's
      value = jax.lax.dynamic_slice_in_dim(value, mask.step, 1, axis=1)
    log_q, log_k = (x[:, 0] for x in self.feature_logs(inputs_q, self.key_features(inputs_kv)))
    valid = jax.lax.dynamic_index_in_dim(mask.key_valid, mask.step, axis=1)[:, :, None]
    new_max = jnp.maximum(k_max.value, jnp.where(valid, log_k, core.NEG_INF))
    decay = jnp.exp(k_max.value - new_max)
    phi_k = jnp.exp(jnp.where(valid, log_k - new_max, core.NEG_INF))
    kv_sum.value = (kv_sum.value * decay[..., None]
                    + jnp.einsum('bhm,bhd->bhmd', phi_k, value[:, 0].astype(jnp.float32)))
    k_sum.value = k_sum.value * decay + phi_k
    k_max.value = new_max
    log_q = log_q + new_max
    phi_q = jnp.exp(log_q - jnp.max(log_q, axis=-1, keepdims=True))
    heads = linear_scan.ratio(jnp.einsum('bhm,bhmd->bhd', phi_q, kv_sum.value),
                              jnp.einsum('bhm,bhm->bh', phi_q, k_sum.value)[..., None])
    return heads[:, None].astype(value.dtype)
