"""Attention variants by name: the names gin's `ATTENTION_TYPE` and the CLI accept.

`build('random', num_heads=12, head_dim=64, ...)` returns a module; names joined by '+'
(`'random+vanilla'`, `'dense+vanilla'`, `'random+dense+vanilla'`) build a learnable mixture.
A new variant is one file plus one line here.
"""
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

# name -> (class, fixed constructor options)
VARIANTS = {
    'vanilla': (dot_product.DotProductAttention, {}),
    'dense': (dense.DenseSynthesizer, {}),
    'factorized_dense': (dense.FactorizedDenseSynthesizer, {}),
    'random': (random.RandomSynthesizer, {'trainable': True}),
    'fixed_random': (random.RandomSynthesizer, {'trainable': False}),
    'factorized_random': (random.FactorizedRandomSynthesizer, {}),
    'orthogonal': (orthogonal.OrthogonalAttention, {}),
    'frozen_gaussian': (frozen_gaussian.FrozenGaussianAttention, {}),
    'cosine': (cosine.CosineAttention, {}),
    'neg_l2': (neg_l2.NegativeL2Attention, {}),
    'hyperbolic': (hyperbolic.HyperbolicAttention, {}),
    'rotary': (rotary.RotaryAttention, {}),
    'topk': (topk.TopKAttention, {}),
    'linear': (linear.LinearAttention, {}),
}

MIXTURE_SEPARATOR = '+'


def names() -> list[str]:
  """The single variant names; any '+'-join of two or more distinct names is a mixture."""
  return sorted(VARIANTS)


def members(name: str) -> tuple[str, ...]:
  """The variant names a (possibly mixture) name is made of; raises on unknown names."""
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


def is_position_dependent(name: str) -> bool:
  """Whether logits depend on absolute query positions (random synthesizers and their mixtures)."""
  return any(VARIANTS[m][0].position_dependent for m in members(name))


def uses_position_bias(name: str) -> bool:
  """Whether a member adds the T5 relative-position bias (all but rotary and linear attention)."""
  return any(VARIANTS[m][0].position_bias for m in members(name))


def build(attention_type: str, **kwargs) -> core.Attention:
  """The module `attention_type` with `core.Attention` fields (and variant options)."""
  parts = members(attention_type)
  if len(parts) > 1:
    return mixture.MixtureAttention(members=parts, **kwargs)
  cls, fixed = VARIANTS[parts[0]]
  overlap = set(fixed) & set(kwargs)
  if overlap:
    raise ValueError(f'{sorted(overlap)} are fixed by the attention type {attention_type!r}.')
  return cls(**fixed, **kwargs)


def axis_rules() -> dict[str, core.AxisRule]:
  """Sharding and Adafactor factoring rules of every logical axis attention parameters use."""
  rules = dict(core.AXIS_RULES)
  for cls in [cls for cls, _ in VARIANTS.values()] + [mixture.MixtureAttention]:
    rules.update(cls.axis_rules)
  return rules
