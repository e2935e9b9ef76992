"""The one attention core every variant shares: scores -> masks -> normalize -> mix.

A variant subclasses `Attention` and says only how its logits are made:

  * `key_features(inputs_kv)` -> per-key tensors the logits need (`[batch, k_len, heads, dim]`),
    or None. The core caches them during autoregressive decoding, next to the values.
  * `attention_logits(inputs_q, key_features, positions)` -> logits
    `[batch | 1, heads, q_len, k_len]`. Batch-independent variants (random synthesizers)
    return a leading 1 so the batch never multiplies their cost; `positions` says where queries
    and keys sit (see `Positions`), which only position-dependent variants read.

The core owns everything else: the value and output projections (T5X names `value`, `out`),
masks and biases, the softmax (always float32), attention dropout, the decode cache, and
length checks. `attention_probabilities` may be overridden whole (the mixture does).
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax import layers
from synth_jax.attention import fused
from synth_jax.attention import packed_shared_scores
from synth_jax.attention import packed_table
from synth_jax.attention import segment_slots

Array = jax.Array
# Large but finite: exp(NEG_INF - max) is exactly 0 in float32, and a fully masked row
# (a padding query) stays finite instead of turning into NaN.
NEG_INF = -1e10

# The cache and the frozen collection names. Frozen variables (fixed random maps, orthogonal
# W_Q/W_K) live outside 'params', so they get no gradient and no optimizer state by construction.
CACHE = 'cache'
FROZEN = 'frozen'

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')


@dataclasses.dataclass(frozen=True)
class AxisRule:
  """How a logical parameter axis is sharded and how Adafactor factors it.

  mesh_axis: mesh axis name (`'model'`, `'data'`) or None for replicated.
  factor: 'row' | 'column' | 'batch' (a stack of independent matrices) | 'none' (never factored).
  """
  mesh_axis: Optional[str]
  factor: str


# Axes of the parameters the core itself creates (T5X names and conventions).
AXIS_RULES = {
    'embed': AxisRule(None, 'row'),
    'joined_kv': AxisRule('model', 'column'),
    'heads': AxisRule('model', 'batch'),
    'kv': AxisRule(None, 'column'),
}


# ----------------------------------------------------------------------------- masks and biases
def make_attention_mask(query_input: Array, key_input: Array, pairwise_fn=jnp.multiply,
                        dtype=jnp.float32) -> Array:
  """Pairwise mask `[batch, 1, q_len, k_len]` from `[batch, q_len]` and `[batch, k_len]`.

  With the default `pairwise_fn` and non-padding indicators (e.g. `tokens > 0`) this is the padding
  mask; with `jnp.equal` on segment ids it is the packing mask.
  """
  mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
  return mask[:, None].astype(dtype)


def make_causal_mask(x: Array, dtype=jnp.float32) -> Array:
  """Causal mask `[batch, 1, len, len]` for `[batch, len]` inputs: query i sees keys j <= i."""
  positions = jnp.broadcast_to(jnp.arange(x.shape[-1]), x.shape)
  return make_attention_mask(positions, positions, jnp.greater_equal, dtype)


def combine_masks(*masks: Optional[Array], dtype=jnp.float32) -> Optional[Array]:
  """Logical AND of the given masks (None entries ignored); None if all are None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  ranks = {m.ndim for m in masks}
  if len(ranks) != 1:
    raise ValueError(f'masks must share a rank, got shapes {[m.shape for m in masks]}')
  combined = masks[0] > 0
  for m in masks[1:]:
    combined = jnp.logical_and(combined, m > 0)
  return combined.astype(dtype)


def combine_biases(*biases: Optional[Array]) -> Optional[Array]:
  """Sum of the given biases (None entries ignored); None if all are None."""
  biases = [b for b in biases if b is not None]
  if not biases:
    return None
  total = biases[0]
  for b in biases[1:]:
    total = total + b
  return total


def normalize(logits: Array, mask: Optional[Array], bias: Optional[Array]) -> Array:
  """Softmax over keys of `logits + bias`, masked entries forced to probability 0 (float32).

  logits: `[batch | 1, heads, q_len, k_len]`; mask, bias: broadcastable to it.
  """
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask > 0, logits, NEG_INF)
  return jax.nn.softmax(logits, axis=-1)


def mix(probabilities: Array, value: Array) -> Array:
  """`[batch | 1, heads, q, k]` x `[batch, k, heads, head_dim]` -> `[batch, q, heads, head_dim]`."""
  return jnp.einsum('bhqk,bkhd->bqhd', probabilities.astype(value.dtype), value)


def packed_per_example_attention(scores: Array, value: Array,
                                 segments: segment_slots.PackedSegments) -> Array:
  """Batch-free `[heads, len, len]` scores read per example within packed segments, then mixed.

  The general path of `packed_shared_scores.packed_shared_scores_attention`:
  `[batch, heads, len, len]` logits.
  """
  logits = packed_table.gather_within_segments(scores, segments.position)
  return mix(normalize(logits, segments.mask(), None), value)


def decode_step_mask_and_bias(mask: Optional[Array], bias: Optional[Array], step: Array,
                              cache_length: int):
  """Mask and bias for one decoding step at position `step` over a cache of `cache_length`.

  Keys after `step` are not generated yet and are masked. A full `[.., len, len]` bias (the
  T5 relative-position bias of the whole target) is sliced to its row `step`.
  """
  visible = (jnp.arange(cache_length) <= step)[None, None, None, :]
  mask = combine_masks(mask, visible)
  if bias is not None and bias.shape[-2] > 1:
    bias = jax.lax.dynamic_slice_in_dim(bias, step, 1, axis=-2)
  return mask, bias


def length_error(variant: str, what: str, length: int, maximum: int) -> ValueError:
  return ValueError(
      f'{variant} attention: {what} length {length} exceeds its {what}-length maximum {maximum}. '
      f'Synthesizer score maps have a fixed size: raise `max_{what}_length` (in the network, gin '
      f'`T5Config.max_encoder_length` for encoder/cross keys, `T5Config.max_decoder_length` for '
      f'decoder queries and keys) to at least {length}, or shorten `TASK_FEATURE_LENGTHS`.')


# ----------------------------------------------------------------------------- positions
@dataclasses.dataclass(frozen=True)
class Positions:
  """Absolute positions of queries and keys, for position-dependent logits.

  Attributes:
    offset: scalar; query i sits at `offset + i` (0, or the step when decoding).
    key_length: number of keys; key j sits at j.
    segment: optional `[batch, len]` positions of each token within its packed segment
      (self-attention over packed examples); it overrides both of the above so a packed example
      sees the same positions as the example alone.
  """
  offset: Array
  key_length: int
  segment: Optional[Array] = None

  def index_table(self, table: Array, q_len: int) -> Array:
    """`table[h, query position, key position]` -> `[batch | 1, heads, q_len, k_len]`.

    Packed: the pairs within one segment (others are 0; the packing mask drops them).
    """
    if self.segment is None:
      rows = jax.lax.dynamic_slice_in_dim(table, self.offset, q_len, axis=1)
      return rows[None, :, :, :self.key_length]
    return packed_table.gather_within_segments(table, self.segment)

  def query_rows(self, table: Array, q_len: int) -> Array:
    """`table[h, query position, :]` -> `[1, heads, q_len, dim]` (unpacked inputs)."""
    return jax.lax.dynamic_slice_in_dim(table, self.offset, q_len, axis=1)[None]

  def key_columns(self, scores: Array) -> Array:
    """Scores over all key positions `[batch, heads, q_len, max_key]` -> those of the keys."""
    if self.segment is None:
      return scores[..., :self.key_length]
    return jnp.take_along_axis(scores, self.segment[:, None, None, :], axis=-1)

  def key_rows(self, table: Array) -> Array:
    """`table[h, key position, :]` -> `[1, heads, k_len, dim]` (unpacked inputs)."""
    return table[None, :, :self.key_length]


# ----------------------------------------------------------------------------- the shared module
class Attention(nn.Module):
  """Multi-head attention with pluggable logits; T5X's call signature.

  Attributes:
    num_heads: number of heads.
    head_dim: per-head dimension of values (and of keys/queries where a variant has them);
      None means embed // num_heads, which must then divide exactly.
    max_query_length, max_key_length: the largest query/key lengths a synthesizer's score map
      covers (encoder 512 / decoder 114 for T5 span corruption). Unused by vanilla attention.
    dtype: activation dtype (e.g. bfloat16); parameters stay float32, softmax runs in float32.
    dropout_rate: dropout on attention probabilities (broadcast over queries, as T5).
    kernel_init: initializer of the value/out (and, where present, key) kernels.
  """
  num_heads: int = 8
  head_dim: Optional[int] = None
  max_query_length: int = 512
  max_key_length: int = 512
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Any = default_kernel_init

  # Variant name for messages; set by subclasses.
  variant_name = 'attention'
  # Whether logits depend on absolute query positions (then the variant cannot be
  # cross-attention in incremental decoding, which does not know the target position).
  position_dependent = False
  # Whether logits are `[1, heads, q, k]` at unpacked positions, shared by every example (random
  # synthesizers): with `lengths` or `segments` they are then normalized once per step
  # (`fused.shared_scores_attention`, `packed_shared_scores`).
  shared_logits = False

  # -- hooks a variant implements --------------------------------------------------------------
  def key_features(self, inputs_kv: Array) -> Optional[Any]:
    """Per-key tensors the logits need (`[batch, k_len, ...]` leaves), cached when decoding."""
    return None

  def attention_logits(self, inputs_q: Array, key_features: Optional[Any],
                       positions: Positions) -> Array:
    """Logits `[batch | 1, heads, q_len, k_len]` before masks, bias and softmax."""
    raise NotImplementedError

  # -- shared machinery -------------------------------------------------------------------------
  def head_size(self, embed: int) -> int:
    """The per-head dimension for inputs of width `embed`."""
    if self.head_dim is not None:
      return self.head_dim
    if embed % self.num_heads:
      raise ValueError(
          f'{self.variant_name} attention: embed dim {embed} is not divisible by num_heads='
          f'{self.num_heads}; set `head_dim` explicitly (gin `T5Config.head_dim`) or choose '
          f'num_heads dividing {embed}.')
    return embed // self.num_heads

  def projection(self, name: str, features, kernel_init=None) -> layers.DenseGeneral:
    """A T5X-style `[embed] -> [heads, dim]` projection (kernel axes `('embed', 'joined_kv')`)."""
    return layers.DenseGeneral(
        features=features, kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
        kernel_init=kernel_init or self.kernel_init, name=name)

  def check_lengths(self, query_positions_max: int, key_length: int):
    if query_positions_max > self.max_query_length:
      raise length_error(self.variant_name, 'query', query_positions_max, self.max_query_length)
    if key_length > self.max_key_length:
      raise length_error(self.variant_name, 'key', key_length, self.max_key_length)

  def cached(self, name: str, new: Any, step: Optional[Array], decode: bool) -> Any:
    """Writes `new` (leaves `[batch, 1, ...]`) at position `step` of cache `name`; returns the cache.

    On the cache-initializing call (`decode` and no cache yet) the cache is created with the shape
    of the full-length `new` and `new` is returned unchanged.
    """
    if not decode or new is None:
      return new
    cache = self.variable(CACHE, name, lambda: jax.tree.map(jnp.zeros_like, new))
    if step is None:
      return new
    updated = jax.tree.map(
        lambda c, n: jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), step, axis=1),
        cache.value, new)
    cache.value = updated
    return updated

  def scoring_inputs(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array],
                     bias: Optional[Array], step: Optional[Array], key_length: int, decode: bool,
                     segment_positions: Optional[Array] = None):
    """What logits are computed from: (key features, mask, bias, `Positions`).

    Caches the key features when decoding and, for a single decode step at `step`, hides keys not
    generated yet and takes the bias row of `step`. Checks lengths against the maxima.
    """
    features = self.cached('cached_key', self.key_features(inputs_kv), step, decode)
    if step is None:
      self.check_lengths(inputs_q.shape[1], key_length)
      return features, mask, bias, Positions(jnp.array(0, jnp.int32), key_length,
                                             segment_positions)
    self.check_lengths(key_length, key_length)
    mask, bias = decode_step_mask_and_bias(mask, bias, step, key_length)
    return features, mask, bias, Positions(step, key_length)

  def attention_probabilities(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array],
                              bias: Optional[Array], step: Optional[Array], key_length: int,
                              decode: bool, segment_positions: Optional[Array] = None) -> Array:
    """Probabilities `[batch | 1, heads, q_len, key_length]`.

    `step` is the decode position (None outside single-step decoding) and `key_length` the number
    of keys: `inputs_kv`'s length, or the cache length when decoding.
    """
    features, mask, bias, positions = self.scoring_inputs(
        inputs_q, inputs_kv, mask, bias, step, key_length, decode, segment_positions)
    return normalize(self.attention_logits(inputs_q, features, positions), mask, bias)

  def attend(self, inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
             segment_positions=None, lengths: Optional[fused.SequenceLengths] = None,
             segments: Optional[segment_slots.PackedSegments] = None) -> Array:
    """Mixes `value` `[batch, k_len, heads, head_dim]` -> `[batch, q_len, heads, head_dim]`."""
    dropout = not deterministic and self.dropout_rate > 0
    batch_free_bias = bias is None or bias.shape[0] == 1
    if (self.shared_logits and (lengths is not None or segments is not None) and step is None
        and not dropout and batch_free_bias):
      # Logits at unpacked positions: `[1, heads, q, k]`; `packed_shared_scores` reads packed
      # segments in their own frames.
      features, mask, bias, positions = self.scoring_inputs(
          inputs_q, inputs_kv, mask, bias, step, value.shape[1], decode)
      logits = self.attention_logits(inputs_q, features, positions)
      if lengths is not None:
        return fused.shared_scores_attention(logits, bias, lengths, value)
      return packed_shared_scores.packed_shared_scores_attention(
          logits, bias, segments, value, packed_per_example_attention)
    probabilities = self.attention_probabilities(
        inputs_q, inputs_kv, mask, bias, step, value.shape[1], decode, segment_positions)
    if dropout:
      probabilities = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
          probabilities, deterministic=False)
    return mix(probabilities, value)

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Optional[Array] = None,
               bias: Optional[Array] = None, *, decode: bool = False, deterministic: bool = True,
               segment_positions: Optional[Array] = None,
               lengths: Optional[fused.SequenceLengths] = None,
               segments: Optional[segment_slots.PackedSegments] = None,
               probabilities_only: bool = False, shared_value: Optional[Array] = None) -> Array:
    """Attention of `inputs_q` `[batch, q_len, embed]` over `inputs_kv` `[batch, k_len, embed]`.

    Args:
      mask: `[batch, 1 | heads, q_len, k_len]`, nonzero where attending is allowed.
      bias: `[1 | batch, heads, q_len, k_len]` added to the logits (T5 relative positions).
      decode: autoregressive decoding. The first call (no cache yet) takes the full-length
        inputs and creates the cache; later calls take one position `[batch, 1, embed]`.
      deterministic: disables dropout.
      segment_positions: `[batch, len]` position of each token within its packed segment, for
        self-attention over packed examples (read by position-dependent variants only).
      lengths: the same mask as `fused.SequenceLengths`, when it is plain padding (and
        causality): lets fused variants and shared-logit variants skip the dense mask. Callers
        pass both; `mask` stays the reference (and the only mask of the other variants).
      segments: for self-attention over packed rows, the packing as `PackedSegments` (callers
        pass `segment_positions` and `mask` too): lets shared-logit variants normalize once per
        step. They then read positions, mask and bias in each segment's own frame from
        `segments` (the bias must depend on j - i only, as T5's relative-position bias does).
      probabilities_only: return the attention probabilities `[batch | 1, heads, q_len, k_len]`
        instead of the output (how a mixture reads its members under attention dropout).
      shared_value: mix this value `[batch, k_len, heads, head_dim]` (a mixture's, already
        cached when decoding) instead of projecting one, and return the mixed heads
        `[batch, q_len, heads, head_dim]` before any output projection (how a mixture runs its
        members, each on its own fastest path).

    Returns:
      `[batch, q_len, embed]`.
    """
    step, key_length = None, inputs_kv.shape[1]
    if decode:
      initialized = self.has_variable(CACHE, 'cache_index')
      index = self.variable(CACHE, 'cache_index', lambda: jnp.array(0, jnp.int32))
      # `[batch, cache_length]`: its shape carries the cache length, which single-step inputs no
      # longer show; batch-major like every cache leaf, so beam search can reorder it.
      key_positions = self.variable(
          CACHE, 'key_positions',
          lambda: jnp.broadcast_to(jnp.arange(key_length), (inputs_kv.shape[0], key_length)))
      if initialized:
        if inputs_q.shape[1] != 1:
          raise ValueError('decode=True steps take one position at a time: inputs_q must be '
                           f'[batch, 1, embed], got {inputs_q.shape}')
        step, key_length = index.value, key_positions.value.shape[1]
        index.value = step + 1
    if probabilities_only:
      return self.attention_probabilities(
          inputs_q, inputs_kv, mask, bias, step, key_length, decode, segment_positions)
    if shared_value is not None:
      return self.attend(inputs_q, inputs_kv, shared_value, mask, bias, step, decode,
                         deterministic, segment_positions, lengths, segments)

    value = self.projection('value', (self.num_heads, self.head_size(inputs_kv.shape[-1])))(
        inputs_kv)
    value = self.cached('cached_value', value, step, decode)
    mixed = self.attend(inputs_q, inputs_kv, value, mask, bias, step, decode, deterministic,
                        segment_positions, lengths, segments)
    out = layers.DenseGeneral(
        features=inputs_q.shape[-1], axis=(-2, -1), kernel_axes=('joined_kv', 'embed'),
        dtype=self.dtype, kernel_init=self.kernel_init, name='out')
    return out(mixed)
