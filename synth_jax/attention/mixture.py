"""Mixture of Synthesizers (Tay et al. 2021, Sec. 3.4): Y = sum_i a_i softmax(S_i(X)) G(X).

Each member (vanilla, dense, random, ...) contributes its attention probabilities; the weights
a = softmax(w) over a learnable vector w sum to 1 (w starts at 0: equal weights). All members
mix one shared value projection G (`value`) and one output projection (`out`). Member parameters
live under the member's registry name, e.g. `attention/random/random_logits`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core

AXIS_RULES = {'mixture_members': core.AxisRule(None, 'none')}


class MixtureAttention(core.Attention):
  """Learnable convex mixture of the registry variants named in `members`."""
  members: tuple[str, ...] = ('random', 'vanilla')

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
    return [registry.build(m, name=m, **shared) for m in self.members]

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
