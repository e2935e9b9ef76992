"""The diagnostic model: a decoder-only causal LM from the T5 layers and any registry attention.

    tokens [batch, length] -> token embedding (+ absolute positions)
      -> num_layers x [ h += ShortConvolution(LN(h))      optional (Zoology's hybrid block)
                        h += Attention(LN(h), causal mask, relative bias)
                        h += MlpBlock(LN(h)) ]
      -> LN -> logits [batch, length, vocab] (float32)

Every variant is judged by the code that trains T5: `layers.*` and `attention.build(name, ...)`,
mixtures and synthesizers included; a synthesizer's score map covers `max_length` positions, so
at longer inputs it raises the registry's ValueError (the extrapolation task's "cannot run").
Position schemes (`POSITIONS`): 'learned' absolute embeddings (a `[max_length, width]` table),
'sinusoidal' (Vaswani et al. 2017, Sec. 3.5), 'relative' (T5's unidirectional bucketed bias,
added by every variant that takes it) and 'none' (causal masking alone).
"""
import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax import attention
from synth_jax import layers
from synth_jax import names
from synth_jax.attention import capture
from synth_jax.attention import kernels
from synth_jax.attention.core import AxisRule

Array = jax.Array

POSITIONS = names.POSITIONS

# Axes this file introduces; diagnostic models run unsharded and train with AdamW, so neither
# axis is split or factored.
AXIS_RULES = {'positions': AxisRule(None, 'none'), 'conv_taps': AxisRule(None, 'none')}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The diagnostic model's architecture.

  Attributes:
    vocab_size: token ids are `[0, vocab_size)`.
    attention: registry name (`synth_jax.attention.names()`, or a '+'-mixture).
    width: model dimension (Zoology's d_model); head_dim = width // num_heads.
    num_layers, num_heads: depth and heads per attention.
    mlp_dim: hidden width of the gated-GELU MLP (None: 2 * width).
    max_length: the longest input; synthesizers' score maps and the learned position table
      cover exactly this many positions.
    positions: one of `POSITIONS`.
    conv_kernel: taps of the causal depthwise convolution before each attention (0: none).
    attention_options: extra constructor options of the attention, as `(name, value)` pairs.
    fold_query_scale: `core.Attention.fold_query_scale`. False by default here: these models
      train with AdamW, under which T5's folded scale makes dot-product variants' logits learn
      sqrt(head_dim) times faster than other variants' (see `attention/dot_product.py`).
  """
  vocab_size: int
  attention: str = 'vanilla'
  width: int = 64
  num_layers: int = 2
  num_heads: int = 2
  mlp_dim: Optional[int] = None
  max_length: int = 64
  positions: str = 'relative'
  conv_kernel: int = 0
  attention_options: Any = ()
  fold_query_scale: bool = False

  def __post_init__(self):
    attention.is_position_dependent(self.attention)  # raises on unknown names
    if self.positions not in POSITIONS:
      raise ValueError(f'positions={self.positions!r}: use one of {", ".join(POSITIONS)}.')
    if self.width % self.num_heads:
      raise ValueError(f'width={self.width} is not divisible by num_heads={self.num_heads}.')
    if self.conv_kernel < 0:
      raise ValueError(f'conv_kernel={self.conv_kernel} must be >= 0 (0: no convolution).')
    object.__setattr__(self, 'attention_options',
                       tuple(sorted(dict(self.attention_options).items())))

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or 2 * self.width


def sinusoidal(length: int, width: int) -> np.ndarray:
  """`[length, width]`: sin in the first half of the features, cos in the second, wavelengths
  2 pi .. 10000 * 2 pi (Vaswani et al. 2017, Sec. 3.5). A constant, so it runs at any length."""
  half = width // 2
  rates = np.exp(-math.log(10_000.0) * np.arange(half) / max(half, 1))
  angles = np.arange(length)[:, None] * rates[None, :]
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  return np.pad(table, ((0, 0), (0, width - 2 * half))).astype(np.float32)


class ShortConvolution(nn.Module):
  """Causal depthwise convolution (Zoology's short convolution, Arora et al. 2023, Sec. 5):
  `y[b, t, c] = sum_{i < kernel_size} w[i, c] x[b, t - i, c]`, with x = 0 before the start.

  `[batch, length, width]` -> `[batch, length, width]`; kernel `[kernel_size, width]`.
  """
  kernel_size: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    taps = self.kernel_size
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
                                     ('conv_taps', 'embed')),
        (taps, x.shape[-1]), jnp.float32)
    length = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (taps - 1, 0), (0, 0)))
    # Tap i reads the input i positions back: the window ending at t - i.
    return sum(kernel[i] * padded[:, taps - 1 - i:taps - 1 - i + length] for i in range(taps))


class Block(nn.Module):
  """Pre-norm residual block: optional short convolution, causal attention, gated-GELU MLP."""
  config: ModelConfig
  dispatch: Any = None

  @nn.compact
  def __call__(self, h: Array, mask: attention.Mask, bias: Optional[Array]) -> Array:
    """`[batch, length, width]` -> `[batch, length, width]`; bias `[1, heads, length, length]`."""
    cfg = self.config
    if cfg.conv_kernel:
      h = h + ShortConvolution(cfg.conv_kernel, name='short_conv')(
          layers.LayerNorm(name='pre_conv_layer_norm')(h))
    x = layers.LayerNorm(name='pre_attention_layer_norm')(h)
    mixer = attention.build(
        cfg.attention, num_heads=cfg.num_heads, head_dim=cfg.width // cfg.num_heads,
        max_query_length=cfg.max_length, max_key_length=cfg.max_length, dispatch=self.dispatch,
        fold_query_scale=cfg.fold_query_scale, name='attention', **dict(cfg.attention_options))
    h = h + mixer(x, x, mask, bias)
    y = layers.LayerNorm(name='pre_mlp_layer_norm')(h)
    return h + layers.MlpBlock(intermediate_dim=cfg.hidden_dim, intermediate_dropout_rate=0.0,
                               name='mlp')(y)


class DecoderLM(nn.Module):
  """Causal LM over `[batch, length]` token ids (every id counts as a token: no padding).

  Attributes:
    config: the architecture.
    attention_execution: how attention runs, as `network.Transformer.attention_execution`
      ('reference', 'fast', 'cudnn', 'xla', 'auto'); never changes the parameters.
  """
  config: ModelConfig
  attention_execution: str = 'fast'

  @nn.compact
  def __call__(self, tokens: Array, answer_positions: Optional[Array] = None) -> Array:
    """Logits `[batch, length, vocab]` float32, or `[batch, n, vocab]` at `answer_positions`
    `[batch, n]` alone (the vocabulary projection, most of this model's work, where the loss
    reads it). `attention_probabilities` captures the maps."""
    cfg = self.config
    length = tokens.shape[1]
    dispatch = kernels.dispatch_for(self.attention_execution, 'DecoderLM.attention_execution')
    mask = attention.Mask.for_self_attention(jnp.ones_like(tokens), causal=True)
    h = layers.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(1.0),
                     name='token_embedder')(tokens)
    if cfg.positions == 'learned':
      if length > cfg.max_length:
        raise ValueError(f'learned positions: length {length} exceeds the table of max_length='
                         f'{cfg.max_length} positions; raise max_length or use positions='
                         "'relative', 'sinusoidal' or 'none', which run at any length.")
      table = self.param(
          'position_embedding',
          nn.with_logical_partitioning(nn.initializers.normal(1.0), ('positions', 'embed')),
          (cfg.max_length, cfg.width), jnp.float32)
      h = h + table[:length]
    elif cfg.positions == 'sinusoidal':
      h = h + sinusoidal(length, cfg.width)
    bias = None
    if cfg.positions == 'relative' and attention.uses_position_bias(cfg.attention):
      bias = layers.RelativePositionBiases(num_heads=cfg.num_heads, name='relpos_bias'
                                           ).table_bias(length, length, bidirectional=False)
    for i in range(cfg.num_layers):
      h = Block(cfg, dispatch, name=f'layers_{i}')(h, mask, bias)
    if answer_positions is not None:
      h = jnp.take_along_axis(h, answer_positions[:, :, None], axis=1)
    h = layers.LayerNorm(name='decoder_norm')(h)
    return layers.DenseGeneral(cfg.vocab_size, kernel_axes=('embed', 'vocab'),
                               output_dtype=jnp.float32, name='logits_dense')(h)


def _maps(model: DecoderLM, variables, tokens: Array) -> list[Array]:
  return [entry.probabilities for entry in capture.capture(model, variables, tokens)]


def attention_probabilities(model: DecoderLM, variables, tokens: Array) -> list[Array]:
  """Per layer, the `[batch | 1, heads, length, length]` float32 attention probabilities
  (`attention/capture.py`, the path T5 runs' maps take too)."""
  return jax.jit(lambda v, t: _maps(model, v, t))(variables, tokens)


def group_attention_probabilities(model: DecoderLM, variables, tokens: Array) -> list[Array]:
  """`attention_probabilities` of a group of runs (`variables` and `tokens` `[runs, batch,
  length]` with a leading `[runs]` axis): per layer `[runs, batch | 1, heads, length, length]`."""
  return jax.jit(jax.vmap(lambda v, t: _maps(model, v, t)))(variables, tokens)
