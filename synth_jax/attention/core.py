"""The attention every variant shares, as a researcher reads it: scores -> mask -> softmax -> mix.

    logits = variant.attention_logits(x_q, key features, mask)        [batch | 1, heads, q, k]
    probabilities = softmax_k(logits + bias, masked keys at -inf)      float32
    heads = probabilities . (x_kv W_V)                                 [batch, q, heads, head_dim]
    output = heads W_out                                               [batch, q, embed]

A variant subclasses `Attention` and says only how its logits are made: `key_features(inputs_kv)`
(per-key tensors, cached while decoding; or None) and `attention_logits(inputs_q, key_features,
mask)`. It declares what a faster exact computation may rely on (`query_key`, `shared_logits`);
those live in `attention/kernels/`, chosen by the `dispatch` a run passes in. Without one, every
call takes the reference path below. Parameter names are T5X's (`value`, `out`, `query`, `key`).
"""
import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax import layers
from synth_jax.attention import masks
from synth_jax.attention import scores

Array = jax.Array
# Large but finite: exp(NEG_INF - max) is 0 in float32, and a fully masked row stays finite.
NEG_INF = -1e10
# Frozen variables live outside 'params': no gradient and no optimizer state by construction.
CACHE = 'cache'
FROZEN = 'frozen'

default_kernel_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal')


@dataclasses.dataclass(frozen=True)
class AxisRule:
  """How a logical parameter axis is sharded (`mesh_axis`: 'model', 'data' or None) and how
  Adafactor factors it (`factor`: 'row' | 'column' | 'batch' (a stack of matrices) | 'none')."""
  mesh_axis: Optional[str]
  factor: str


# Axes of the parameters the core itself creates (T5X names and conventions).
AXIS_RULES = {
    'embed': AxisRule(None, 'row'),
    'joined_kv': AxisRule('model', 'column'),
    'heads': AxisRule('model', 'batch'),
    'kv': AxisRule(None, 'column'),
}


def dense_bias(bias) -> Optional[Array]:
  """A bias as its `[1 | batch, heads, q, k]` array (a `layers.RelativeBias` is made dense)."""
  return bias.dense() if isinstance(bias, layers.RelativeBias) else bias


def normalize(logits: Array, mask: Optional[Array], bias: Optional[Array]) -> Array:
  """Softmax over keys of `logits + bias`, masked entries exactly 0 (float32).

  logits: `[batch | 1, heads, q_len, k_len]`; mask (bool), bias: broadcastable to it.
  """
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if mask is not None:
    logits = jnp.where(mask, logits, NEG_INF)
  return jax.nn.softmax(logits, axis=-1)


def mix(probabilities: Array, value: Array) -> Array:
  """`[batch | 1, heads, q, k]` x `[batch, k, heads, head_dim]` -> `[batch, q, heads, head_dim]`."""
  return jnp.einsum('bhqk,bkhd->bqhd', probabilities.astype(value.dtype), value)


def dropout_mask(rate: float, batch: int, heads: int, k_len: int) -> Array:
  """T5's attention dropout as multipliers `[batch, heads, 1, k_len]` (0 or 1 / (1 - rate)): one
  mask for every query of a row (`nn.Dropout(broadcast_dims=(-2,))` on the probabilities)."""
  return nn.Dropout(rate, broadcast_dims=(-2,))(
      jnp.ones((batch, heads, 1, k_len), jnp.float32), deterministic=False)


def length_error(variant: str, what: str, length: int, maximum: int) -> ValueError:
  return ValueError(
      f'{variant} attention: {what} length {length} exceeds its {what}-length maximum {maximum}. '
      f'Synthesizer score maps have a fixed size: raise `max_{what}_length` (in the network, gin '
      f'`T5Config.max_encoder_length` for encoder/cross keys, `T5Config.max_decoder_length` for '
      f'decoder queries and keys) to at least {length}, or shorten `TASK_FEATURE_LENGTHS`.')


def creates_variables(method: Callable) -> Callable:
  """Lets `method` create this module's variables when a parent module (a mixture) calls it.

  Flax creates variables only inside a module's one `@nn.compact` method; this runs `method`
  inside it (`Attention.in_compact_scope`).
  """
  @functools.wraps(method)
  def wrapper(self, *args, **kwargs):
    return self.in_compact_scope(method, *args, **kwargs)
  return wrapper


class Attention(nn.Module):
  """Multi-head attention with pluggable logits; T5X's call signature.

  Attributes:
    num_heads: number of heads.
    head_dim: per-head dimension; None means embed // num_heads, which must divide exactly.
    max_query_length, max_key_length: the lengths a synthesizer's score map covers.
    dtype: activation dtype; parameters stay float32 and the softmax runs in float32.
    dropout_rate: dropout on attention probabilities (broadcast over queries, as T5).
    kernel_init: initializer of the value/out (and, where present, key) kernels.
    dispatch: `(module, inputs_q, key_features, value, mask, bias, dropout) -> heads | None`, a
      faster exact computation of `mix_heads` (`kernels.Dispatch`; `dropout`, when training
      with attention dropout, draws the reference's dropout multipliers `[batch, heads, 1,
      k_len]`); None: always the reference path.
    fold_query_scale: where dot-product variants (vanilla, rotary, topk) put 1/sqrt(head_dim):
      True (T5) folds it into the query kernel's initializer; False (Vaswani et al.) keeps an
      unscaled kernel and multiplies the logits (`dot_product.py` says when each is right).
      Other variants ignore it.
  """
  num_heads: int = 8
  head_dim: Optional[int] = None
  max_query_length: int = 512
  max_key_length: int = 512
  dtype: Any = jnp.float32
  dropout_rate: float = 0.0
  kernel_init: Any = default_kernel_init
  dispatch: Optional[Callable] = None
  fold_query_scale: bool = True

  # Whether max_query_length/max_key_length bound the inputs: True for variants that hold a
  # score map of that size (synthesizers); variants that compute every logit from the tokens
  # set it False and run at any length.
  length_bounded = True

  variant_name = 'attention'
  axis_rules = AXIS_RULES
  # Logits depend on absolute query positions (so the variant cannot be cross-attention).
  position_dependent = False
  # Logits are `score_table()` read at the token positions: the same for every example.
  shared_logits = False
  # Logits are `scale * queries . keys`, up to a constant per query that the softmax cancels
  # (`query_key_form`): they can run on the fused dot-product kernel (`kernels/flash.py`).
  query_key = False
  # Probabilities are a normalized kernel phi(q).phi(k) (`feature_logs()`; linear attention).
  kernel_features = False
  # Whether the T5 relative-position bias is added (rotary and linear attention do without).
  position_bias = True

  def key_features(self, inputs_kv: Array) -> Optional[Any]:
    return None

  def attention_logits(self, inputs_q: Array, key_features: Optional[Any],
                       mask: masks.Mask) -> Array:
    raise NotImplementedError

  def query_key_form(self, inputs_q: Array, key_features: Any, mask: masks.Mask):
    """`(queries [batch | 1, q_len, heads, d], keys [batch | 1, k_len, heads, d], scale)` whose
    `scale * q . k` are the logits up to a per-query constant; variants with `query_key`."""
    raise NotImplementedError(f'{self.variant_name} attention has no query-key form.')

  def block_scores(self, inputs_q: Array, key_features: Any, mask: masks.Mask,
                   block_size: int) -> scores.Scores:
    """The logits as a function of per-token features (`scores.Scores`), for blockwise
    attention (`kernels/blockwise.py`); by default the query-key form's."""
    if self.query_key:
      return scores.query_key(*self.query_key_form(inputs_q, key_features, mask))
    raise NotImplementedError(f'{self.variant_name} attention has no blockwise form.')

  @nn.compact
  def in_compact_scope(self, method: Callable, *args, **kwargs):
    return method(self, *args, **kwargs)

  @creates_variables
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask=None, bias: Optional[Array] = None,
               *, decode: bool = False, deterministic: bool = True) -> Array:
    """`inputs_q` `[batch, q_len, embed]` attends over `inputs_kv` `[batch, k_len, embed]`.

    mask: a `masks.Mask`, a dense `[batch, 1 | heads, q_len, k_len]` array, or None.
    bias: `[1 | batch, heads, q_len, k_len]` added to the logits (T5 relative positions).
    decode: autoregressive decoding; the first call (no cache yet) creates the cache from
      full-length inputs, later calls take one position `[batch, 1, embed]`.
    Returns `[batch, q_len, embed]`.
    """
    mask, bias = self.decode_position(inputs_q, inputs_kv, mask, bias, decode)
    value = self.projection('value', inputs_kv.shape[-1])(inputs_kv)
    value = self.cached('cached_value', value, mask, decode)
    heads = self.mix_heads(inputs_q, inputs_kv, value, mask, bias, decode=decode,
                           deterministic=deterministic)
    out = layers.DenseGeneral(features=inputs_q.shape[-1], axis=(-2, -1),
                              kernel_axes=('joined_kv', 'embed'), dtype=self.dtype,
                              kernel_init=self.kernel_init, name='out')
    return out(heads)

  @creates_variables
  def mix_heads(self, inputs_q, inputs_kv, value, mask: masks.Mask, bias, *, decode=False,
                deterministic=True, dropout_multipliers: Optional[Array] = None) -> Array:
    """`value` `[batch, k_len, heads, head_dim]` mixed by the attention:
    `[batch, q_len, heads, head_dim]`.

    dropout_multipliers: `[batch, heads, 1, k_len]` attention dropout drawn by a caller (a
    mixture, which drops once for all its members), in place of this module's own.
    """
    mask = masks.as_mask(mask, *inputs_q.shape[:2], inputs_kv.shape[1])
    bias = bias if self.position_bias else None
    if dropout_multipliers is None and not deterministic and self.dropout_rate > 0:
      # Drawn only where used; the same module name, shape and bits wherever that is.
      draw = lambda: dropout_mask(self.dropout_rate, value.shape[0], self.num_heads,
                                  value.shape[1])
    elif dropout_multipliers is not None:
      draw = lambda: dropout_multipliers
    else:
      draw = None
    features = self.scoring_features(inputs_q, inputs_kv, mask, decode)
    if self.dispatch is not None:
      fast = self.dispatch(self, inputs_q, features, value, mask, bias, dropout=draw)
      if fast is not None:
        return fast
    probabilities = normalize(self.attention_logits(inputs_q, features, mask), mask.dense(),
                              dense_bias(bias))
    if draw is not None:
      probabilities = probabilities * draw()
    return mix(probabilities, value)

  @creates_variables
  def probabilities(self, inputs_q, inputs_kv, mask: masks.Mask, bias, *, decode=False) -> Array:
    """`[batch | 1, heads, q_len, k_len]` float32 attention probabilities."""
    mask = masks.as_mask(mask, *inputs_q.shape[:2], inputs_kv.shape[1])
    bias = bias if self.position_bias else None
    features = self.scoring_features(inputs_q, inputs_kv, mask, decode)
    return normalize(self.attention_logits(inputs_q, features, mask), mask.dense(),
                     dense_bias(bias))

  # -- shared machinery ----------------------------------------------------------------------------
  def head_size(self, embed: int) -> int:
    if self.head_dim is not None:
      return self.head_dim
    if embed % self.num_heads:
      raise ValueError(
          f'{self.variant_name} attention: embed dim {embed} is not divisible by num_heads='
          f'{self.num_heads}; set `head_dim` explicitly (gin `T5Config.head_dim`) or choose '
          f'num_heads dividing {embed}.')
    return embed // self.num_heads

  def projection(self, name: str, embed: int, features=None, kernel_init=None):
    """A T5X `[embed] -> [heads, dim]` projection (kernel axes `('embed', 'joined_kv')`)."""
    return layers.DenseGeneral(
        features=features or (self.num_heads, self.head_size(embed)),
        kernel_axes=('embed', 'joined_kv'), dtype=self.dtype,
        kernel_init=kernel_init or self.kernel_init, name=name)

  def check_lengths(self, query_length: int, key_length: int):
    """Refuses inputs longer than the score map a length-bounded variant holds."""
    if not self.length_bounded:
      return
    if query_length > self.max_query_length:
      raise length_error(self.variant_name, 'query', query_length, self.max_query_length)
    if key_length > self.max_key_length:
      raise length_error(self.variant_name, 'key', key_length, self.max_key_length)

  def scoring_features(self, inputs_q, inputs_kv, mask: masks.Mask, decode: bool):
    """The key features (cached while decoding), after checking lengths against the maxima."""
    k_len = mask.key_valid.shape[1]
    self.check_lengths(k_len if mask.step is not None else inputs_q.shape[1], k_len)
    return self.cached('cached_key', self.key_features(inputs_kv), mask, decode)

  def cached(self, name: str, new: Any, mask: masks.Mask, decode: bool) -> Any:
    """Writes `new` (leaves `[batch, 1, ...]`) at the decode step into cache `name`; returns it.

    The cache-creating call (full-length `new`, no step yet) returns `new` unchanged.
    """
    if not decode or new is None:
      return new
    cache = self.variable(CACHE, name, lambda: jax.tree.map(jnp.zeros_like, new))
    if mask.step is None:
      return new
    cache.value = jax.tree.map(
        lambda c, n: jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), mask.step, axis=1),
        cache.value, new)
    return cache.value

  def decode_position(self, inputs_q, inputs_kv, mask, bias, decode):
    """The `Mask` of this call, and the bias row of the current step while decoding."""
    batch, q_len, k_len = inputs_q.shape[0], inputs_q.shape[1], inputs_kv.shape[1]
    if not decode:
      return masks.as_mask(mask, batch, q_len, k_len), bias
    initialized = self.has_variable(CACHE, 'cache_index')
    index = self.variable(CACHE, 'cache_index', lambda: jnp.array(0, jnp.int32))
    # Its shape carries the cache length, which single-step inputs no longer show; batch-major
    # like every cache leaf, so beam search can reorder it.
    key_positions = self.variable(
        CACHE, 'key_positions', lambda: jnp.broadcast_to(jnp.arange(k_len), (batch, k_len)))
    bias = dense_bias(bias)
    if not initialized:
      return masks.as_mask(mask, batch, q_len, k_len), bias
    if q_len != 1:
      raise ValueError('decode=True steps take one position at a time: inputs_q must be '
                       f'[batch, 1, embed], got {inputs_q.shape}')
    step = index.value
    index.value = step + 1
    cache_length = key_positions.value.shape[1]
    mask = masks.as_mask(mask, batch, 1, cache_length).at_decode_step(step)
    if bias is not None and bias.shape[-2] > 1:
      bias = jax.lax.dynamic_slice_in_dim(bias, step, 1, axis=-2)
    return mask, bias
