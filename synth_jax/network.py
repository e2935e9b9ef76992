"""T5 v1.1 encoder-decoder with the attention type of each location chosen by name.

The stack is T5X's `examples/t5` network: pre-norm residual blocks, gated-GELU MLPs, T5 relative
position biases, no biases anywhere, float32 logits. With every attention 'vanilla' the parameter
tree (paths, shapes, logical axes) equals T5X's, so checkpoints map one to one.

What is ours: `T5Config.{encoder,decoder,cross}_attention` name a registry attention type
(`synth_jax.attention.names()`, or a '+'-mixture) for each location, and
`max_{encoder,decoder}_length` size the synthesizers' score maps. The relative-position bias is
added to self-attention of every type (the T5 convention the Synthesizer paper keeps) except
rotary attention, which encodes positions itself, and linear attention, whose kernel cannot take
an additive bias: a stack of those has no `relpos_bias` table. Cross-attention gets none. Each location gets one `attention.Mask`, built here from the token
ids: padding, causality, and with packing the segments and each token's position within its
segment, so position-dependent synthesizers (random: row i of R is query position i) see a packed
example exactly as they would see it alone. How attention executes is a run option
(`Transformer.attention_execution`), never part of the architecture.
"""
import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from synth_jax import attention
from synth_jax import layers
from synth_jax.attention import kernels

Array = jax.Array

ACTIVATION_AXES = ('batch', 'length', 'embed')


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyperparameters of the whole network (T5X's `T5Config` plus the attention choices).

  Attributes:
    vocab_size: shared input/output vocabulary size (32128 for T5's SentencePiece vocab).
    dtype: activation dtype, e.g. 'bfloat16'; parameters and logits stay float32.
    emb_dim, num_heads, head_dim, mlp_dim: widths (T5 d_model, heads, d_kv, d_ff).
    num_encoder_layers, num_decoder_layers: depths.
    mlp_activations: ('gelu', 'linear') is T5 v1.1's gated GELU; ('relu',) is T5 v1.0's MLP.
    dropout_rate: dropout everywhere T5 has it (0 for v1.1 pretraining, 0.1 for fine-tuning).
    logits_via_embedding: tie the output projection to the token embedding.
    logits_matmul_dtype: operand dtype of the output projection; the logits are float32 either
      way. float32 is T5X's (TF32 matmuls on NVIDIA GPUs); bfloat16 rounds the decoder output
      and the kernel, accumulates in float32, and takes the bfloat16 tensor cores.
    encoder_attention, decoder_attention: registry names of encoder / decoder self-attention
      (gin macro `ATTENTION_TYPE` sets both).
    cross_attention: registry name of encoder-decoder attention; must be position-free.
    self_attention_options: extra constructor options of the self-attention variant, e.g.
      `{'rank': 16}` (factorized_random), `{'trainable': False}`... see each variant's
      attributes. Stored as sorted `(name, value)` pairs so the config stays hashable.
    max_encoder_length, max_decoder_length: the longest inputs / targets the synthesizers'
      score maps cover (T5 span corruption: 512 / 114).
  """
  vocab_size: int
  dtype: Any = jnp.float32
  emb_dim: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  head_dim: int = 64
  mlp_dim: int = 2048
  mlp_activations: Sequence[str] = ('gelu', 'linear')
  dropout_rate: float = 0.1
  logits_via_embedding: bool = False
  logits_matmul_dtype: Any = jnp.float32
  encoder_attention: str = 'vanilla'
  decoder_attention: str = 'vanilla'
  cross_attention: str = 'vanilla'
  self_attention_options: Any = ()
  max_encoder_length: int = 512
  max_decoder_length: int = 114

  def __post_init__(self):
    # Normalized so configs from gin (strings, lists) are hashable flax module attributes.
    object.__setattr__(self, 'dtype', jnp.dtype(self.dtype))
    object.__setattr__(self, 'logits_matmul_dtype', jnp.dtype(self.logits_matmul_dtype))
    if self.logits_matmul_dtype not in (jnp.float32, jnp.bfloat16):
      raise ValueError(f'T5Config.logits_matmul_dtype={self.logits_matmul_dtype.name!r}: use '
                       "'float32' (T5X's) or 'bfloat16' (bfloat16 operands, float32 logits).")
    object.__setattr__(self, 'mlp_activations', tuple(self.mlp_activations))
    object.__setattr__(self, 'self_attention_options',
                       tuple(sorted(dict(self.self_attention_options).items())))
    known = {}
    for field in ('encoder_attention', 'decoder_attention', 'cross_attention'):
      try:
        known[field] = attention.facts(getattr(self, field))
      except ValueError as e:
        raise ValueError(f'T5Config.{field}: {e}') from None
    if known['cross_attention'].position_dependent:
      position_free = [n for n in attention.names() if not attention.facts(n).position_dependent]
      raise ValueError(
          f'T5Config.cross_attention={self.cross_attention!r} depends on absolute query '
          f'positions, which cross-attention does not know during incremental decoding (each '
          f'step sees one target token). Choose a position-free type: {", ".join(position_free)}, '
          f'or a "+"-mixture of them. Random synthesizers remain available as self-attention '
          f'(`T5Config.encoder_attention` / `T5Config.decoder_attention`, gin `ATTENTION_TYPE`).')


def _dropout(cfg: T5Config, x: Array, deterministic: bool, broadcast_length: bool = True) -> Array:
  """T5's dropout; by default the mask is shared across the length axis (-2)."""
  broadcast_dims = (-2,) if broadcast_length else ()
  return nn.Dropout(cfg.dropout_rate, broadcast_dims=broadcast_dims)(
      x, deterministic=deterministic)


def _attention(cfg: T5Config, attention_type: str, max_query_length: int, max_key_length: int,
               name: str, dispatch, options=()) -> nn.Module:
  try:
    return attention.build(
        attention_type, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
        max_query_length=max_query_length, max_key_length=max_key_length, dtype=cfg.dtype,
        dropout_rate=cfg.dropout_rate, dispatch=dispatch, name=name, **dict(options))
  except TypeError as error:
    raise ValueError(f'T5Config.self_attention_options={dict(options)} do not fit attention '
                     f'type {attention_type!r}: {error}') from None


def _residual(cfg: T5Config, block_output: Array, inputs: Array, deterministic: bool) -> Array:
  """T5's sublayer exit: dropout on the block's output, add the residual, constrain the layout."""
  return nn.with_logical_constraint(
      _dropout(cfg, block_output, deterministic) + inputs, ACTIVATION_AXES)


def _mlp(cfg: T5Config) -> layers.MlpBlock:
  return layers.MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                         intermediate_dropout_rate=cfg.dropout_rate, dtype=cfg.dtype, name='mlp')


class EncoderLayer(nn.Module):
  """Pre-norm self-attention block and MLP block, each with a residual connection."""
  config: T5Config
  dispatch: Any = None

  @nn.compact
  def __call__(self, inputs: Array, mask: attention.Mask, encoder_bias: Array,
               deterministic: bool = True) -> Array:
    """`[batch, length, emb]` -> `[batch, length, emb]`.

    Args:
      mask: the self-attention mask (padding, packing and positions within segments).
      encoder_bias: the relative position bias (`layers.RelativeBias`, `[1, heads, length,
        length]` when made dense) or None.
    """
    cfg = self.config
    x = layers.LayerNorm(dtype=cfg.dtype, name='pre_attention_layer_norm')(inputs)
    x = _attention(cfg, cfg.encoder_attention, cfg.max_encoder_length, cfg.max_encoder_length,
                   'attention', self.dispatch, cfg.self_attention_options)(
                       x, x, mask, encoder_bias, deterministic=deterministic)
    x = _residual(cfg, x, inputs, deterministic)
    y = layers.LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(x)
    return _residual(cfg, _mlp(cfg)(y, deterministic=deterministic), x, deterministic)


class DecoderLayer(nn.Module):
  """Causal self-attention, encoder-decoder attention and MLP blocks, each pre-norm + residual."""
  config: T5Config
  dispatch: Any = None

  @nn.compact
  def __call__(self, inputs: Array, encoded: Array, self_mask: Optional[attention.Mask],
               cross_mask: attention.Mask, decoder_bias: Array, deterministic: bool = True,
               decode: bool = False) -> Array:
    """`[batch, length, emb]` -> `[batch, length, emb]` (length 1 in decode steps).

    Args:
      encoded: `[batch, enc_length, emb]` encoder output.
      self_mask: the causal self-attention mask; None when decoding (the attention cache masks
        positions not generated yet).
      cross_mask: the encoder-decoder mask.
      decoder_bias: the relative position bias (`layers.RelativeBias`); when decoding, over the
        whole `max_decode_length` (attention takes the row of the current step).
      decode: use and update the autoregressive cache of self-attention.
    """
    cfg = self.config
    x = layers.LayerNorm(dtype=cfg.dtype, name='pre_self_attention_layer_norm')(inputs)
    x = _attention(cfg, cfg.decoder_attention, cfg.max_decoder_length, cfg.max_decoder_length,
                   'self_attention', self.dispatch, cfg.self_attention_options)(
                       x, x, self_mask, decoder_bias, deterministic=deterministic, decode=decode)
    x = _residual(cfg, x, inputs, deterministic)
    # Cross-attention keys come whole from the encoder each step, so it is never cached.
    y = layers.LayerNorm(dtype=cfg.dtype, name='pre_cross_attention_layer_norm')(x)
    y = _attention(cfg, cfg.cross_attention, cfg.max_decoder_length, cfg.max_encoder_length,
                   'encoder_decoder_attention', self.dispatch)(
                       y, encoded, cross_mask, deterministic=deterministic)
    y = _residual(cfg, y, x, deterministic)
    z = layers.LayerNorm(dtype=cfg.dtype, name='pre_mlp_layer_norm')(y)
    return _residual(cfg, _mlp(cfg)(z, deterministic=deterministic), y, deterministic)


def _relpos_bias(cfg: T5Config) -> layers.RelativePositionBiases:
  return layers.RelativePositionBiases(num_heads=cfg.num_heads, dtype=cfg.dtype,
                                       name='relpos_bias')


class Encoder(nn.Module):
  """Token embedding, a stack of encoder layers, final norm."""
  config: T5Config
  shared_embedding: nn.Module
  dispatch: Any = None

  @nn.compact
  def __call__(self, encoder_input_tokens: Array, mask: attention.Mask,
               deterministic: bool = True) -> Array:
    """Token ids `[batch, length]` and their self-attention mask -> `[batch, length, emb]`."""
    cfg = self.config
    length = encoder_input_tokens.shape[1]
    # One bias shared by all layers (T5 learns a single table per stack).
    encoder_bias = None
    if attention.facts(cfg.encoder_attention).uses_position_bias:
      encoder_bias = _relpos_bias(cfg).table_bias(length, length, bidirectional=True)

    x = self.shared_embedding(encoder_input_tokens.astype(jnp.int32))
    x = _dropout(cfg, x, deterministic).astype(cfg.dtype)
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, self.dispatch, name=f'layers_{i}')(x, mask, encoder_bias,
                                                               deterministic)
    x = layers.LayerNorm(dtype=cfg.dtype, name='encoder_norm')(x)
    # T5X drops whole elements here (no broadcast over length).
    return _dropout(cfg, x, deterministic, broadcast_length=False)


class Decoder(nn.Module):
  """Token embedding, a stack of decoder layers, final norm, float32 logits."""
  config: T5Config
  shared_embedding: nn.Module
  dispatch: Any = None

  @nn.compact
  def __call__(self, encoded: Array, decoder_input_tokens: Array,
               self_mask: Optional[attention.Mask], cross_mask: attention.Mask,
               deterministic: bool = True, decode: bool = False,
               max_decode_length: Optional[int] = None) -> Array:
    """Token ids `[batch, length]` -> logits `[batch, length, vocab]` (float32).

    `self_mask` is None in decode steps (the cache masks what is not generated yet).
    """
    cfg = self.config
    length = decoder_input_tokens.shape[1]
    if decode and max_decode_length is None and length == 1:
      raise ValueError(
          'Decoding one token per step needs `max_decode_length` (the cache length) so the '
          'relative position bias covers every step; pass max_decode_length to decode().')
    bias_length = max_decode_length if decode and max_decode_length else length
    decoder_bias = None
    if attention.facts(cfg.decoder_attention).uses_position_bias:
      decoder_bias = _relpos_bias(cfg).table_bias(bias_length, bias_length,
                                                 bidirectional=False)

    y = self.shared_embedding(decoder_input_tokens.astype(jnp.int32))
    y = _dropout(cfg, y, deterministic).astype(cfg.dtype)
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, self.dispatch, name=f'layers_{i}')(
          y, encoded, self_mask, cross_mask, decoder_bias, deterministic=deterministic,
          decode=decode)
    y = layers.LayerNorm(dtype=cfg.dtype, name='decoder_norm')(y)
    y = _dropout(cfg, y, deterministic)

    if cfg.logits_via_embedding:
      # Tied weights: rescale so the logits' variance matches an untied projection's init.
      logits = self.shared_embedding.attend(y) / jnp.sqrt(y.shape[-1]).astype(jnp.float32)
    else:
      logits = layers.DenseGeneral(cfg.vocab_size, kernel_axes=('embed', 'vocab'),
                                   dtype=cfg.logits_matmul_dtype, output_dtype=jnp.float32,
                                   name='logits_dense')(y)
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class Transformer(nn.Module):
  """T5 encoder-decoder; T5X's `encode` / `decode` / `__call__` interface.

  Token id 0 is padding everywhere (masks come from `tokens > 0`; unpacked rows pad at the end,
  as seqio's do), and also the decoder's start token, which is fine because decoder masks come
  from `decoder_target_tokens`.

  Attributes:
    config: the architecture.
    attention_execution: how attention runs, a run option that never changes the parameters or
      the result beyond rounding: 'reference' (the plain core path), 'fast' (plus exact rewrites
      that run anywhere: random synthesizers normalized once per step), 'cudnn', 'xla' or 'auto'
      (plus query-key variants, vanilla and orthogonal, through
      `jax.nn.dot_product_attention`; 'cudnn' is flash attention on NVIDIA GPUs).
      See `attention/kernels/`.
  """
  config: T5Config
  attention_execution: str = 'fast'

  def setup(self):
    cfg = self.config
    dispatch = kernels.dispatch_for(self.attention_execution,
                                    'Transformer.attention_execution')
    self.shared_embedding = layers.Embed(
        num_embeddings=cfg.vocab_size, features=cfg.emb_dim, dtype=cfg.dtype,
        attend_dtype=cfg.logits_matmul_dtype, attend_output_dtype=jnp.float32,
        embedding_init=nn.initializers.normal(stddev=1.0),
        name='token_embedder')
    self.encoder = Encoder(config=cfg, shared_embedding=self.shared_embedding,
                           dispatch=dispatch)
    self.decoder = Decoder(config=cfg, shared_embedding=self.shared_embedding,
                           dispatch=dispatch)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             enable_dropout: bool = True, encoder_positions: Optional[Array] = None) -> Array:
    """Token ids `[batch, enc_length]` (0 = padding) -> encodings `[batch, enc_length, emb]`.

    `encoder_segment_ids` `[batch, enc_length]` (packing) keep attention within each segment;
    `encoder_positions`, each token's position in its segment, are derived from them if absent.
    Without segment ids, positions are ignored.
    """
    if encoder_input_tokens.ndim != 2:
      raise ValueError(f'encoder_input_tokens must be [batch, length], got '
                       f'{encoder_input_tokens.shape}')
    mask = attention.Mask.for_self_attention(encoder_input_tokens, encoder_segment_ids,
                                             encoder_positions)
    return self.encoder(encoder_input_tokens, mask, deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
             decoder_segment_ids: Optional[Array] = None,
             decoder_positions: Optional[Array] = None, enable_dropout: bool = True,
             decode: bool = False, max_decode_length: Optional[int] = None) -> Array:
    """Decoder logits `[batch, dec_length, vocab]` (float32) given the encodings.

    Args:
      encoded: `[batch, enc_length, emb]` from `encode`.
      encoder_input_tokens: `[batch, enc_length]`, only for the padding mask.
      decoder_input_tokens: `[batch, dec_length]`, the targets shifted right (0 starts a sequence);
        `[batch, 1]` in decode steps.
      decoder_target_tokens: `[batch, dec_length]` (0 = padding), only for masks; with
        `decode=True` only its shape is used.
      encoder_segment_ids, decoder_segment_ids: packing segment ids; give both or neither.
      decoder_positions: `[batch, dec_length]` positions within packed segments; derived from
        `decoder_segment_ids` if absent, ignored without them.
      enable_dropout: training mode.
      decode: autoregressive decoding. The first call, on full-length tokens, creates the
        self-attention caches (pass `mutable=['cache']`); later calls take one token per step and
        need `max_decode_length`, the cache length.
      max_decode_length: the full target length of the cache (decode steps only).
    """
    if (encoder_segment_ids is None) != (decoder_segment_ids is None):
      raise ValueError('Packed inputs need both encoder_segment_ids and decoder_segment_ids; '
                       'got only one.')
    if decode:
      if encoder_segment_ids is not None:
        raise ValueError('Decoding does not support packed inputs, but segment ids were passed '
                         'to Transformer.decode.')
      # Self-attention masks future steps through its cache; targets are not known yet.
      self_mask = None
      cross_mask = attention.Mask.for_cross_attention(
          jnp.ones(decoder_target_tokens.shape, bool), encoder_input_tokens)
    else:
      self_mask = attention.Mask.for_self_attention(
          decoder_target_tokens, decoder_segment_ids, decoder_positions, causal=True)
      cross_mask = attention.Mask.for_cross_attention(
          decoder_target_tokens > 0, encoder_input_tokens, decoder_segment_ids,
          encoder_segment_ids, self_mask.query_positions)
    return self.decoder(encoded, decoder_input_tokens, self_mask, cross_mask,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Optional[Array] = None,
               decoder_segment_ids: Optional[Array] = None,
               encoder_positions: Optional[Array] = None,
               decoder_positions: Optional[Array] = None, *, enable_dropout: bool = True,
               decode: bool = False) -> Array:
    """Logits `[batch, dec_length, vocab]` (float32) of the whole encoder-decoder.

    Args:
      encoder_input_tokens: `[batch, enc_length]` (0 = padding).
      decoder_input_tokens: `[batch, dec_length]`, the targets shifted right; in packed batches
        each segment starts with 0.
      decoder_target_tokens: `[batch, dec_length]` (0 = padding).
      encoder_segment_ids, decoder_segment_ids: `[batch, length]` packing segment ids.
      encoder_positions, decoder_positions: `[batch, length]` positions within packed segments
        (derived from the segment ids if absent; ignored without them).
      enable_dropout: training mode.
      decode: with full-length tokens and `mutable=['cache']`, creates the decode caches.
    """
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids=encoder_segment_ids,
                          enable_dropout=enable_dropout, encoder_positions=encoder_positions)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
                       encoder_segment_ids=encoder_segment_ids,
                       decoder_segment_ids=decoder_segment_ids,
                       decoder_positions=decoder_positions, enable_dropout=enable_dropout,
                       decode=decode)


# gin binds these public constructors (`synth_jax.network.T5Config.emb_dim = 512`); calling the
# classes directly never reads gin.
gin.external_configurable(T5Config, module='synth_jax.network')
gin.external_configurable(Transformer, module='synth_jax.network')
