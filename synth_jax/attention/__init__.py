"""Attention variants on one shared core; `build(name, **options)` is the public entry point."""
from synth_jax.attention.core import Attention
from synth_jax.attention.masks import Mask
from synth_jax.attention.masks import combine_masks
from synth_jax.attention.masks import make_attention_mask
from synth_jax.attention.masks import make_causal_mask
from synth_jax.attention.registry import Facts
from synth_jax.attention.registry import axis_rules
from synth_jax.attention.registry import build
from synth_jax.attention.registry import facts
from synth_jax.attention.registry import is_position_dependent
from synth_jax.attention.registry import names
from synth_jax.attention.registry import uses_position_bias
