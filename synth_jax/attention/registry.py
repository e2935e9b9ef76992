"""Attention variants by name, and the facts about each name: what gin and the CLI accept.

`build('random', num_heads=12, head_dim=64, ...)` returns a module; names joined by '+'
(`'random+vanilla'`, `'dense+vanilla'`, `'random+dense+vanilla'`) build a learnable mixture.
`facts(name)` answers, from one parse of the name, everything the network and the diagnostics
ask about it. A new variant is one file plus one line here.

Families, by what a variant's attention weights are made of:
  'synthesizer'  logits synthesized without comparing a query with a key (Tay et al. 2021):
                 dense, factorized_dense, random, fixed_random, factorized_random
  'query_key'    logits are a similarity of a query and a key (a dot product, a cosine, a
                 distance): vanilla, orthogonal, frozen_gaussian, cosine, neg_l2, hyperbolic,
                 rotary, topk
  'kernel'       no logits: a normalized feature-map kernel phi(q).phi(k) (linear)
  'mixture'      a learnable mixture of two or more variants; `member_families` has theirs
"""
import dataclasses
from typing import Any

from synth_jax.attention import core
from synth_jax.attention import cosine
from synth_jax.attention import dense
from synth_jax.attention import dot_product
from synth_jax.attention import frozen_gaussian
from synth_jax.attention import hyperbolic
from synth_jax.attention import linear
from synth_jax.attention import mixture
from synth_jax.attention import neg_l2
from synth_jax.attention import orthogonal
from synth_jax.attention import random
from synth_jax.attention import rotary
from synth_jax.attention import topk

SYNTHESIZER, QUERY_KEY, KERNEL, MIXTURE = 'synthesizer', 'query_key', 'kernel', 'mixture'
FAMILIES = (SYNTHESIZER, QUERY_KEY, KERNEL, MIXTURE)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One registry line: the module class, its family, and constructor options the name fixes."""
  cls: type
  family: str
  options: dict[str, Any] = dataclasses.field(default_factory=dict)


VARIANTS = {
    'vanilla': Variant(dot_product.DotProductAttention, QUERY_KEY),
    'dense': Variant(dense.DenseSynthesizer, SYNTHESIZER),
    'factorized_dense': Variant(dense.FactorizedDenseSynthesizer, SYNTHESIZER),
    'random': Variant(random.RandomSynthesizer, SYNTHESIZER, {'trainable': True}),
    'fixed_random': Variant(random.RandomSynthesizer, SYNTHESIZER, {'trainable': False}),
    'factorized_random': Variant(random.FactorizedRandomSynthesizer, SYNTHESIZER),
    'orthogonal': Variant(orthogonal.OrthogonalAttention, QUERY_KEY),
    'frozen_gaussian': Variant(frozen_gaussian.FrozenGaussianAttention, QUERY_KEY),
    'cosine': Variant(cosine.CosineAttention, QUERY_KEY),
    'neg_l2': Variant(neg_l2.NegativeL2Attention, QUERY_KEY),
    'hyperbolic': Variant(hyperbolic.HyperbolicAttention, QUERY_KEY),
    'rotary': Variant(rotary.RotaryAttention, QUERY_KEY),
    'topk': Variant(topk.TopKAttention, QUERY_KEY),
    'linear': Variant(linear.LinearAttention, KERNEL),
}

MIXTURE_SEPARATOR = '+'


@dataclasses.dataclass(frozen=True)
class Facts:
  """What is known about an attention name (a variant or a '+'-mixture), from `facts(name)`.

  name: the name as built: its members joined by '+', without spaces.
  members: the variant names it is made of, in order; `(name,)` for a single variant.
  family: one of FAMILIES; 'mixture' when there are two or more members.
  member_families: each member's family, in the order of `members`.
  position_dependent: logits depend on absolute query positions (random synthesizers and their
    mixtures), so it cannot be cross-attention.
  uses_position_bias: a member adds the T5 relative-position bias (all but rotary and linear).
  """
  name: str
  members: tuple[str, ...]
  family: str
  member_families: tuple[str, ...]
  position_dependent: bool
  uses_position_bias: bool

  @property
  def is_mixture(self) -> bool:
    return len(self.members) > 1


def names() -> list[str]:
  """The single variant names; any '+'-join of two or more distinct names is a mixture."""
  return sorted(VARIANTS)


def _parse(name: str) -> tuple[str, ...]:
  """The member names of `name`, with an error naming the valid ones for an unknown member."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'attention type must be a non-empty string, got {name!r}')
  parts = tuple(p.strip() for p in name.split(MIXTURE_SEPARATOR))
  unknown = [p for p in parts if p not in VARIANTS]
  if unknown:
    raise ValueError(
        f'unknown attention type {unknown[0]!r} in {name!r}. Valid types: {", ".join(names())}, '
        f'or a mixture of distinct types joined by "{MIXTURE_SEPARATOR}" (e.g. "random+vanilla").')
  if len(set(parts)) != len(parts):
    raise ValueError(f'mixture {name!r} names a variant twice; each member may appear once.')
  return parts


def facts(name: str) -> Facts:
  """The facts of attention name `name`; raises ValueError, listing the valid names, if unknown."""
  parts = _parse(name)
  variants = [VARIANTS[p] for p in parts]
  return Facts(
      name=MIXTURE_SEPARATOR.join(parts), members=parts,
      family=MIXTURE if len(parts) > 1 else variants[0].family,
      member_families=tuple(v.family for v in variants),
      position_dependent=any(v.cls.position_dependent for v in variants),
      uses_position_bias=any(v.cls.position_bias for v in variants))


def members(name: str) -> tuple[str, ...]:
  """The variant names a (possibly mixture) name is made of; raises on unknown names."""
  return facts(name).members


def is_position_dependent(name: str) -> bool:
  """Whether logits depend on absolute query positions (random synthesizers and their mixtures)."""
  return facts(name).position_dependent


def uses_position_bias(name: str) -> bool:
  """Whether a member adds the T5 relative-position bias (all but rotary and linear attention)."""
  return facts(name).uses_position_bias


def build(attention_type: str, **kwargs) -> core.Attention:
  """The module `attention_type` with `core.Attention` fields (and variant options)."""
  known = facts(attention_type)
  if known.is_mixture:
    # The mixture builds its members through this function: it never imports the registry.
    return mixture.MixtureAttention(members=known.members, build_member=build, **kwargs)
  variant = VARIANTS[known.name]
  overlap = set(variant.options) & set(kwargs)
  if overlap:
    raise ValueError(f'{sorted(overlap)} are fixed by the attention type {attention_type!r}.')
  return variant.cls(**variant.options, **kwargs)


def axis_rules() -> dict[str, core.AxisRule]:
  """Sharding and Adafactor factoring rules of every logical axis attention parameters use."""
  rules = dict(core.AXIS_RULES)
  for cls in [v.cls for v in VARIANTS.values()] + [mixture.MixtureAttention]:
    rules.update(cls.axis_rules)
  return rules
