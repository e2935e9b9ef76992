"""Random Synthesizer (Tay et al. 2021, Sec. 3.2): input-independent attention maps.

Y_h = softmax(R_h) G_h(X), with R_h a learned (or frozen) matrix per head, shared by every
example. `R` covers the maximum query and key lengths and is sliced to the actual lengths, so
query i attends with row i of R whatever the input: logits[1, h, i, j] = R[h, i, j].

The factorized form (Sec. 3.3) is R_h = R1_h R2_h^T with R1_h: [max_query, k], R2_h: [max_key, k].

The logits are `[1, heads, q, k]` and softmax(R) is taken once per step for the whole batch:
unpacked given the mask as lengths (`fused.shared_scores_attention`), packed with each segment
in a slot of its own (`packed_shared_scores`). Otherwise (attention dropout, rows of more
examples than slots) each token reads R at its position within its segment (`packed_table`),
so the logits are per example.
"""
import flax.linen as nn
import jax.numpy as jnp

from synth_jax.attention import core

AXIS_RULES = {
    'synth_query_length': core.AxisRule(None, 'row'),
    'synth_key_length': core.AxisRule(None, 'column'),
    'synth_rank': core.AxisRule(None, 'none'),
}


class RandomSynthesizer(core.Attention):
  """Random Synthesizer; `R: [heads, max_query_length, max_key_length]`.

  Attributes:
    trainable: False freezes R at its random init (the paper's "fixed" variant). A frozen R lives
      in the 'frozen' collection, so it has no gradient and no optimizer state.
    init_stddev: standard deviation of R's normal initializer.
  """
  trainable: bool = True
  init_stddev: float = 1.0

  variant_name = 'random'
  position_dependent = True
  shared_logits = True

  def score_map(self):
    """`R: [heads, max_query_length, max_key_length]` (float32)."""
    shape = (self.num_heads, self.max_query_length, self.max_key_length)
    init = nn.with_logical_partitioning(
        nn.initializers.normal(self.init_stddev),
        ('heads', 'synth_query_length', 'synth_key_length'))
    if self.trainable:
      return self.param('random_logits', init, shape, jnp.float32)
    return self.variable(
        core.FROZEN, 'random_logits', lambda: init(self.make_rng('params'), shape, jnp.float32)
    ).value

  def attention_logits(self, inputs_q, key_features, positions):
    return positions.index_table(self.score_map(), inputs_q.shape[1])


class FactorizedRandomSynthesizer(core.Attention):
  """Factorized Random Synthesizer: `R_h = R1_h R2_h^T` of rank `rank` (Sec. 3.3)."""
  rank: int = 8
  init_stddev: float = 1.0

  variant_name = 'factorized_random'
  position_dependent = True
  shared_logits = True

  def attention_logits(self, inputs_q, key_features, positions):
    # Each factor's entries get stddev s / rank^(1/4) so R1 R2^T has stddev s like the dense R.
    init = nn.initializers.normal(self.init_stddev * self.rank ** -0.25)
    query_factor = self.param(
        'query_factor',
        nn.with_logical_partitioning(init, ('heads', 'synth_query_length', 'synth_rank')),
        (self.num_heads, self.max_query_length, self.rank), jnp.float32)
    key_factor = self.param(
        'key_factor',
        nn.with_logical_partitioning(init, ('heads', 'synth_key_length', 'synth_rank')),
        (self.num_heads, self.max_key_length, self.rank), jnp.float32)
    if positions.segment is not None:
      # Packed: form R once per step and index it per example, as the random synthesizer does,
      # rather than multiplying the factors again at every example's positions.
      table = jnp.einsum('hqr,hkr->hqk', query_factor, key_factor)
      return positions.index_table(table, inputs_q.shape[1])
    return jnp.einsum('bhqr,bhkr->bhqk', positions.query_rows(query_factor, inputs_q.shape[1]),
                      positions.key_rows(key_factor))
