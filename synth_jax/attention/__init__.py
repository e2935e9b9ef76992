"""Attention variants on one shared core; `build(name, **options)` is the public entry point."""
from synth_jax.attention.core import Attention
from synth_jax.attention.core import combine_biases
from synth_jax.attention.core import combine_masks
from synth_jax.attention.core import make_attention_mask
from synth_jax.attention.core import make_causal_mask
from synth_jax.attention.fused import SequenceLengths
from synth_jax.attention.registry import accepts_option
from synth_jax.attention.registry import axis_rules
from synth_jax.attention.registry import build
from synth_jax.attention.registry import has_shared_logits
from synth_jax.attention.registry import is_position_dependent
from synth_jax.attention.registry import names
from synth_jax.attention import segment_slots
from synth_jax.attention.segment_slots import PackedSegments
