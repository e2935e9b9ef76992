"""Mixture of Synthesizers (Tay et al. 2021, Sec. 3.4): Y = sum_i a_i softmax(S_i(X)) G(X).

Each member (vanilla, dense, random, ...) contributes its attention probabilities; the weights
a = softmax(w) over a learnable vector w sum to 1 (w starts at 0: equal weights). All members
mix one shared value projection G (`value`) and one output projection (`out`). Member parameters
live under the member's registry name, e.g. `attention/random/random_logits`. The members are
made by `build_member` (the registry's `build`, which passes itself), so this module never
imports the registry that imports it.

Y is linear in the probabilities, so it is computed as sum_i a_i (softmax(S_i) G(X)): each
member mixes the shared value through its own `mix_heads` (and so its own fastest path), and no
`[batch, heads, q, k]` sum is formed. Attention dropout is one mask on the mixed probabilities,
as a single attention would have; being a product, it is the same mask on each member's.
"""
import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core

AXIS_RULES = {'mixture_members': core.AxisRule(None, 'none')}


class MixtureAttention(core.Attention):
  """Learnable convex mixture of the registry variants named in `members`.

  build_member(name, **options) -> core.Attention makes one member; `registry.build` passes
  itself. Build mixtures with `synth_jax.attention.build('random+vanilla', ...)`.
  """
  members: tuple[str, ...] = ('random', 'vanilla')
  build_member: Optional[Callable[..., core.Attention]] = None

  variant_name = 'mixture'
  axis_rules = AXIS_RULES

  def member_modules(self) -> list[core.Attention]:
    if self.build_member is None:
      raise ValueError('MixtureAttention needs `build_member` to make its members; build '
                       "mixtures by name: synth_jax.attention.build('random+vanilla', ...).")
    # Members take every `core.Attention` field of the mixture but dropout: the mixture drops
    # once, on the mixed probabilities.
    shared = {field.name: getattr(self, field.name) for field in dataclasses.fields(core.Attention)
              if field.name not in ('parent', 'name', 'dropout_rate')}
    return [self.build_member(m, name=m, **shared) for m in self.members]

  def mixture_weights(self) -> jax.Array:
    """a = softmax(w): `[num_members]`, nonnegative, summing to 1."""
    w = self.param('mixture_logits',
                   nn.with_logical_partitioning(nn.initializers.zeros, ('mixture_members',)),
                   (len(self.members),), jnp.float32)
    return jax.nn.softmax(w)

  @core.creates_variables
  def probabilities(self, inputs_q, inputs_kv, mask, bias, *, decode=False):
    weights = self.mixture_weights()
    return sum(w * m.probabilities(inputs_q, inputs_kv, mask, bias, decode=decode)
               for w, m in zip(weights, self.member_modules()))

  @core.creates_variables
  def mix_heads(self, inputs_q, inputs_kv, value, mask, bias, *, decode=False,
                deterministic=True, dropout_multipliers=None):
    if dropout_multipliers is None and not deterministic and self.dropout_rate > 0:
      # One mask on the mixed probabilities is the same mask on every member's.
      dropout_multipliers = core.dropout_mask(self.dropout_rate, value.shape[0], self.num_heads,
                                              value.shape[1])
    weights = self.mixture_weights()
    total = sum(w * m.mix_heads(inputs_q, inputs_kv, value, mask, bias, decode=decode,
                                dropout_multipliers=dropout_multipliers).astype(jnp.float32)
                for w, m in zip(weights, self.member_modules()))
    return total.astype(value.dtype)
