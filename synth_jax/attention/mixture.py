"""Mixture of Synthesizers (Tay et al. 2021, Sec. 3.4): Y = sum_i a_i softmax(S_i(X)) G(X).

Each member (vanilla, dense, random, ...) contributes its attention probabilities; the weights
a = softmax(w) over a learnable vector w sum to 1 (w starts at 0: equal weights). All members
mix one shared value projection G (`value`) and one output projection (`out`). Member parameters
live under the member's registry name, e.g. `attention/random/random_logits`.

Y is linear in the probabilities, so it is computed as sum_i a_i (softmax(S_i) G(X)): each
member mixes the shared value on its own fastest path (flash attention, shared scores), and no
`[batch, heads, q, k]` sum is formed. Under attention dropout (one dropout mask on the mixed
probabilities, as a single attention would have) the probabilities are summed first.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core

AXIS_RULES = {'mixture_members': core.AxisRule(None, 'none')}


class MixtureAttention(core.Attention):
  """Learnable convex mixture of the registry variants named in `members`.

  Attributes:
    members: registry names of the mixed variants.
    fused: passed to the members that have the option (vanilla, orthogonal).
  """
  members: tuple[str, ...] = ('random', 'vanilla')
  fused: Optional[str] = None

  variant_name = 'mixture'

  @property
  def position_dependent(self):
    from synth_jax.attention import registry  # pylint: disable=g-import-not-at-top
    return any(registry.is_position_dependent(m) for m in self.members)

  def member_modules(self):
    from synth_jax.attention import registry  # pylint: disable=g-import-not-at-top
    shared = dict(num_heads=self.num_heads, head_dim=self.head_dim,
                  max_query_length=self.max_query_length, max_key_length=self.max_key_length,
                  dtype=self.dtype, kernel_init=self.kernel_init)
    modules = []
    for m in self.members:
      options = dict(shared)
      if self.fused and registry.accepts_option(m, 'fused'):
        options['fused'] = self.fused
      modules.append(registry.build(m, name=m, **options))
    return modules

  def mixture_weights(self):
    """a = softmax(w): `[num_members]`, nonnegative, summing to 1."""
    w = self.param('mixture_logits',
                   nn.with_logical_partitioning(nn.initializers.zeros, ('mixture_members',)),
                   (len(self.members),), jnp.float32)
    return jax.nn.softmax(w)

  def attention_probabilities(self, inputs_q, inputs_kv, mask, bias, step, key_length, decode,
                              segment_positions=None):
    weights = self.mixture_weights()
    total = 0.0
    for weight, member in zip(weights, self.member_modules()):
      total = total + weight * member(
          inputs_q, inputs_kv, mask, bias, decode=decode, segment_positions=segment_positions,
          probabilities_only=True)
    return total

  def attend(self, inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
             segment_positions=None, lengths=None, segments=None):
    if not deterministic and self.dropout_rate > 0:
      return super().attend(inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
                            segment_positions, lengths, segments)
    weights = self.mixture_weights()
    total = 0.0
    for weight, member in zip(weights, self.member_modules()):
      mixed = member(inputs_q, inputs_kv, mask, bias, decode=decode,
                     segment_positions=segment_positions, lengths=lengths, segments=segments,
                     shared_value=value)
      total = total + weight * mixed.astype(jnp.float32)
    return total.astype(value.dtype)
