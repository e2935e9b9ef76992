"""Random Synthesizer (Tay et al. 2021, Sec. 3.2): input-independent attention maps.

Y_h = softmax(R_h) G_h(X), with R_h a learned (or frozen) matrix per head, shared by every
example. `R` covers the maximum query and key lengths and is read at the token positions, so
query i attends with row i of R whatever the input: logits[h, i, j] = R[h, i, j] (in a packed
row, i and j are positions within the example's segment).

The factorized form (Sec. 3.3) is R_h = R1_h R2_h^T with R1_h: [max_query, k], R2_h: [max_key, k].

Both declare `shared_logits`: the logits are one table for the whole batch, which the kernels
normalize once per step (`kernels/shared_scores.py`). Blockwise attention reads R at each block's
positions (`block_scores`); the factorized form is a dot product, R1[:, pos(i)] . R2[:, pos(j)]
(`query_key_form`), and runs on the fused kernel where the shared table does not apply.
"""
import flax.linen as nn
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import positions
from synth_jax.attention import scores

AXIS_RULES = {
    'synth_query_length': core.AxisRule(None, 'row'),
    'synth_key_length': core.AxisRule(None, 'column'),
    'synth_rank': core.AxisRule(None, 'none'),
}


class TableSynthesizer(core.Attention):
  """A synthesizer whose logits are `score_table()` `[heads, max_query, max_key]` read at the
  token positions."""
  position_dependent = True
  shared_logits = True
  axis_rules = AXIS_RULES

  def score_table(self):
    raise NotImplementedError

  def attention_logits(self, inputs_q, key_features, mask):
    return positions.table_logits(self.score_table(), mask, inputs_q.shape[1],
                                  mask.key_valid.shape[1])

  def block_scores(self, inputs_q, key_features, mask, block_size):
    def function(table, query_positions, key_positions):
      rows = table[:, query_positions[:, :, None], key_positions[:, None, :]]  # [h, b, q, k]
      return jnp.transpose(rows, (1, 0, 2, 3))
    return scores.Scores(function, self.score_table(),
                         positions.query_index(mask, inputs_q.shape[1]),
                         positions.key_index(mask, mask.key_valid.shape[1]))


class RandomSynthesizer(TableSynthesizer):
  """Random Synthesizer; `R: [heads, max_query_length, max_key_length]`.

  Attributes:
    trainable: False freezes R at its random init (the paper's "fixed" variant). A frozen R lives
      in the 'frozen' collection, so it has no gradient and no optimizer state.
    init_stddev: standard deviation of R's normal initializer.
  """
  trainable: bool = True
  init_stddev: float = 1.0

  variant_name = 'random'

  def score_table(self):
    shape = (self.num_heads, self.max_query_length, self.max_key_length)
    init = nn.with_logical_partitioning(
        nn.initializers.normal(self.init_stddev),
        ('heads', 'synth_query_length', 'synth_key_length'))
    if self.trainable:
      return self.param('random_logits', init, shape, jnp.float32)
    return self.variable(
        core.FROZEN, 'random_logits', lambda: init(self.make_rng('params'), shape, jnp.float32)
    ).value


class FactorizedRandomSynthesizer(TableSynthesizer):
  """Factorized Random Synthesizer: `R_h = R1_h R2_h^T` of rank `rank` (Sec. 3.3)."""
  rank: int = 8
  init_stddev: float = 1.0

  variant_name = 'factorized_random'
  query_key = True

  def score_table(self):
    return jnp.einsum('hqr,hkr->hqk', *self.factors())

  def block_scores(self, inputs_q, key_features, mask, block_size):
    """The factors per block (the query-key form), not `TableSynthesizer`'s `[h, q, k]` table."""
    return scores.query_key(*self.query_key_form(inputs_q, key_features, mask))

  def query_key_form(self, inputs_q, key_features, mask):
    query_factor, key_factor = self.factors()
    read = lambda factor, index: jnp.transpose(factor[:, index], (1, 2, 0, 3))  # [b|1, l, h, r]
    return (read(query_factor, positions.query_index(mask, inputs_q.shape[1])),
            read(key_factor, positions.key_index(mask, mask.key_valid.shape[1])), 1.0)

  def factors(self):
    """R1 `[heads, max_query_length, rank]`, R2 `[heads, max_key_length, rank]`."""
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
    return query_factor, key_factor
