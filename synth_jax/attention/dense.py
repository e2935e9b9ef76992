"""Dense Synthesizer (Tay et al. 2021, Sec. 3.1): each token predicts its own attention row.

B_i = W2 relu(W1 x_i) in R^{max_key_length} per head, sliced to the key length, so
logits[b, h, i, j] = sum_d W2[h, d, j] relu(x_i W1)[h, d]. Like T5's dense layers it has no bias.

The factorized form (Sec. 3.3) predicts two short vectors A_i in R^a and B_i in R^b with
a * b = max_key_length and combines them as an outer product, logit j = p*a + r -> A_i[r] B_i[p]:
H_A tiles A b times, H_B repeats each entry of B a times, and C = H_A(A) * H_B(B).

The dense synthesizer's logits are a dot product in disguise: B_ij = relu(W1 x_i) . W2[:, pos(j)],
queries the hidden vectors and keys W2's columns at the key positions (within segments on packed
rows), scale 1: `query_key_form` runs it on the fused kernel. The factorized form is read block by
block (`block_scores`): logit j = A_i[pos(j) mod a] B_i[pos(j) div a].
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import positions
from synth_jax.attention import scores as scores_lib

AXIS_RULES = {
    'synth_hidden': core.AxisRule(None, 'row'),
    'synth_key_length': core.AxisRule(None, 'column'),
    'synth_factor': core.AxisRule(None, 'column'),
}


class DenseSynthesizer(core.Attention):
  """Dense Synthesizer; `W1: [embed, heads*head_dim]`, `W2: [heads, head_dim, max_key_length]`."""
  variant_name = 'dense'
  axis_rules = AXIS_RULES
  query_key = True

  def hidden_and_table(self, inputs_q):
    """relu(x W1) `[batch, q_len, heads, head_dim]` and W2 `[heads, head_dim, max_key_length]`."""
    head_dim = self.head_size(inputs_q.shape[-1])
    hidden = jax.nn.relu(self.projection('dense_1', inputs_q.shape[-1])(inputs_q))
    w2 = self.param(
        'dense_2',
        nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', batch_axis=(0,)),
            ('heads', 'synth_hidden', 'synth_key_length')),
        (self.num_heads, head_dim, self.max_key_length), jnp.float32)
    return hidden, w2

  def attention_logits(self, inputs_q, key_features, mask):
    hidden, w2 = self.hidden_and_table(inputs_q)
    scores = jnp.einsum('bqhd,hdk->bhqk', hidden, w2.astype(self.dtype))
    return positions.key_columns(scores, mask, mask.key_valid.shape[1])

  def query_key_form(self, inputs_q, key_features, mask):
    hidden, w2 = self.hidden_and_table(inputs_q)
    key_positions = positions.key_index(mask, mask.key_valid.shape[1])  # [batch | 1, k_len]
    keys = jnp.transpose(w2[:, :, key_positions], (2, 3, 0, 1))  # [batch | 1, k_len, h, d]
    return hidden, keys.astype(self.dtype), 1.0


def default_factor(length: int) -> int:
  """The largest divisor of `length` that is at most sqrt(length): 512 -> 16 (16 x 32)."""
  return max(d for d in range(1, math.isqrt(length) + 1) if length % d == 0)


class FactorizedDenseSynthesizer(core.Attention):
  """Factorized Dense Synthesizer; `A: [embed, heads*a]`, `B: [embed, heads*b]`, a*b = max_key.

  Attributes:
    factor: a; None picks the largest divisor of max_key_length that is <= its square root.
  """
  factor: int | None = None

  variant_name = 'factorized_dense'
  axis_rules = AXIS_RULES

  def factors(self) -> tuple[int, int]:
    a = self.factor or default_factor(self.max_key_length)
    if self.max_key_length % a:
      raise ValueError(
          f'factorized_dense attention: factor a={a} does not divide max_key_length='
          f'{self.max_key_length}; pick a divisor for `factor` (a * b must equal max_key_length).')
    return a, self.max_key_length // a

  def attention_logits(self, inputs_q, key_features, mask):
    a, b = self.factors()
    embed = inputs_q.shape[-1]
    factor_a = self.projection('factor_a', embed, (self.num_heads, a))(inputs_q)  # [b, q, h, a]
    factor_b = self.projection('factor_b', embed, (self.num_heads, b))(inputs_q)  # [b, q, h, b]
    outer = jnp.einsum('bqhr,bqhp->bhqpr', factor_a, factor_b)
    batch, heads, q_len = outer.shape[:3]
    return positions.key_columns(outer.reshape(batch, heads, q_len, a * b), mask,
                                 mask.key_valid.shape[1])

  def block_scores(self, inputs_q, key_features, mask, block_size):
    a, b = self.factors()
    embed = inputs_q.shape[-1]
    factor_a = self.projection('factor_a', embed, (self.num_heads, a))(inputs_q)
    factor_b = self.projection('factor_b', embed, (self.num_heads, b))(inputs_q)

    def function(params, query, key_positions):
      del params
      factor_a, factor_b = query  # [b, q, h, a], [b, q, h, b]
      read = lambda factor, index: jnp.take_along_axis(
          factor, jnp.broadcast_to(index[:, None, None, :], factor.shape[:3] + index.shape[-1:]),
          axis=-1)
      logits = read(factor_a, key_positions % a) * read(factor_b, key_positions // a)
      return jnp.transpose(logits, (0, 2, 1, 3))
    return scores_lib.Scores(function, (), (factor_a, factor_b),
                             positions.key_index(mask, mask.key_valid.shape[1]))
