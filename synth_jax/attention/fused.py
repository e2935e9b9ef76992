"""Attention without a `[batch, heads, q_len, k_len]` probability tensor.

The shared core normalizes `[batch, heads, q, k]` logits in float32 and keeps them for the
backward pass: at T5-base shapes (batch 128, 512 tokens) that is 1.5 GiB per tensor per layer, and
moving it dominates the attention time. Two exact rewrites avoid it when the mask is plain
padding (and causality), given as `SequenceLengths` instead of a dense mask:

* `flash_attention`: softmax(q k^T * scale + bias) v through `jax.nn.dot_product_attention`
  (cuDNN's fused flash-attention kernel on GPU; 'xla' runs the same call anywhere). Used by the
  query-key variants (vanilla, orthogonal).
* `shared_scores_attention`: for logits shared by the whole batch (random synthesizers,
  `[1, heads, q, k]`), the softmax is computed once per step and the per-example padding enters
  through two matmuls: with E = softmax(S) over all keys,
      out[b, i] = sum_j E[i, j] m[b, j] v[b, j] / sum_j E[i, j] m[b, j],
  where m[b, j] = 1 for the keys of example b. This is softmax over the example's keys, exactly.

Packed batches (segment ids) have no lengths form. Query-key variants keep the dense mask there;
shared scores move each segment to a slot of its own, where it is an unpacked example
(`packed_shared_scores.py`).
"""
from typing import Optional

import flax
import jax
import jax.numpy as jnp

Array = jax.Array

# `fused` / `T5Config.fused_attention` values: 'auto' lets `jax.nn.dot_product_attention` choose.
IMPLEMENTATIONS = ('cudnn', 'xla', 'auto')


def check_implementation(implementation: Optional[str], where: str):
  """Raises a ValueError naming `where` unless `implementation` is None or a known one."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f'{where}={implementation!r} is not a fused attention implementation; use '
                     f'one of {", ".join(map(repr, IMPLEMENTATIONS))}, or None for the core path.')


@flax.struct.dataclass
class SequenceLengths:
  """A padding (and causal) mask in the form the fused paths take.

  Attributes:
    query: `[batch]` int32, the number of non-padding queries of each example (padding trails).
    key: `[batch]` int32, the number of non-padding keys.
    causal: query i sees keys j <= i only (decoder self-attention).

  Equivalent to the dense mask `[batch, 1, q, k]` of `mask()`; unpacked seqio batches pad at the
  end, so their token > 0 masks have this form.
  """
  query: Array
  key: Array
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  @classmethod
  def from_tokens(cls, query_tokens: Array, key_tokens: Array, causal: bool = False):
    """Lengths of `[batch, len]` token ids with trailing padding (id 0)."""
    count = lambda tokens: jnp.sum(tokens > 0, axis=1, dtype=jnp.int32)
    return cls(count(query_tokens), count(key_tokens), causal)

  def key_valid(self, k_len: int) -> Array:
    """`[batch, k_len]` bool: which keys are not padding."""
    return jnp.arange(k_len)[None, :] < self.key[:, None]

  def mask(self, q_len: int, k_len: int) -> Array:
    """The dense mask `[batch, 1, q_len, k_len]` (bool) these lengths stand for."""
    query_valid = jnp.arange(q_len)[None, :] < self.query[:, None]
    mask = query_valid[:, :, None] & self.key_valid(k_len)[:, None, :]
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((q_len, k_len), bool))[None]
    return mask[:, None]


def flash_attention(query: Array, key: Array, value: Array, bias: Optional[Array],
                    mask: Optional[Array], lengths: Optional[SequenceLengths], scale: float,
                    implementation: Optional[str]) -> Array:
  """softmax(query key^T * scale + bias) value, fused.

  Args:
    query: `[batch, q_len, heads, head_dim]`; key, value: `[batch, k_len, heads, head_dim]`.
    bias: `[1, heads, q_len, k_len]` or None (kept batch-free, so its gradient is one
      `[1, heads, q, k]` reduction inside the kernel).
    mask: dense `[batch, 1, q_len, k_len]`, used only without `lengths` (packed batches): it is
      then folded into a `[batch, heads, q, k]` bias, which costs memory traffic.
    lengths: padding/causal mask as lengths (preferred).
    implementation: 'cudnn', 'xla', or None (JAX chooses).

  Returns:
    `[batch, q_len, heads, head_dim]`; rows of padding queries are zero.
  """
  dtype = value.dtype
  query, key = query.astype(dtype), key.astype(dtype)
  if bias is not None:
    bias = bias.astype(dtype)
  if lengths is not None:
    # An empty example (length 0, e.g. batch padding in evaluation) would give the kernel rows
    # with no key at all; it sees one key instead, and its rows are zeroed below.
    at_least_one = lambda n: jnp.maximum(n, 1).astype(jnp.int32)
    out = jax.nn.dot_product_attention(
        query, key, value, bias=bias, scale=scale, is_causal=lengths.causal,
        query_seq_lengths=at_least_one(lengths.query),
        key_value_seq_lengths=at_least_one(lengths.key), implementation=implementation)
    query_valid = jnp.arange(query.shape[1])[None, :] < lengths.query[:, None]
    return jnp.where(query_valid[:, :, None, None], out, 0).astype(dtype)
  if mask is not None:
    mask = jnp.broadcast_to(mask > 0, mask.shape[:1] + (query.shape[2],) + mask.shape[2:])
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale,
                                      implementation=implementation)


def batch_free_scores(logits: Array, bias: Optional[Array]) -> Array:
  """`[1, heads, q, k]` logits (+ bias) -> `[heads, q, k]` float32 scores."""
  scores = logits[0].astype(jnp.float32)
  if bias is not None:
    scores = scores + bias[0].astype(jnp.float32)
  return scores


def shared_weights(scores: Array, longest: Array, causal: bool) -> Array:
  """E = softmax of `[heads, q_len, k_len]` float32 `scores` over the keys before `longest`.

  Keys at or past `longest` (no example has valid keys there; at least key 0 stays) leave the
  softmax, so their scores get an exactly zero gradient rather than the rounding noise of the
  ratio in `mix_keys_minor`, which Adafactor's normalized update would turn into full-size steps.
  Causal: query i sees keys j <= i only; E is 0 elsewhere.
  """
  q_len, k_len = scores.shape[-2:]
  visible = jnp.broadcast_to(jnp.arange(k_len) < jnp.maximum(longest, 1), (q_len, k_len))
  if causal:
    visible = visible & jnp.tril(jnp.ones((q_len, k_len), bool))
  return jax.nn.softmax(jnp.where(visible, scores, -jnp.inf), axis=-1)


def to_keys_minor(x: Array) -> Array:
  """`[batch, len, heads, head_dim]` <-> `[heads, head_dim, batch, len]` (its own inverse)."""
  return jnp.transpose(x, (2, 3, 0, 1))


def mix_keys_minor(weights: Array, key_valid: Array, value: Array) -> Array:
  """out[h, :, b, i] = sum_j E[h, i, j] m[b, j] v[h, :, b, j] / sum_j E[h, i, j] m[b, j].

  The softmax over each example's valid keys (m[b, j] = 1), from one E for the batch. The layout
  keeps the mixed axis minor-most and the heads major-most, so both matmuls are plain GEMMs
  batched over heads: `[heads, head_dim x batch, k] x [heads, q, k]^T`. With the batch before
  the keys (`[batch, len, heads, head_dim]`) XLA transposes operands and results around each
  matmul instead, which cost packed random synthesizers more than their matmuls
  (`BENCHMARKS.md`).

  Args:
    weights: E, `[heads, q_len, k_len]` float32 (`shared_weights`).
    key_valid: `[*batch, k_len]` bool; `*batch` is one or more example axes.
    value: `[heads, head_dim, *batch, k_len]`.

  Returns:
    `[heads, head_dim, *batch, q_len]` in `value.dtype`.
  """
  masked_value = jnp.where(key_valid, value, 0)
  numerator = jnp.einsum('hd...k,hqk->hd...q', masked_value, weights.astype(value.dtype),
                         preferred_element_type=jnp.float32)
  # Any per-row scale of E cancels in the ratio, so E may be normalized over the keys of the
  # longest example: it keeps E <= 1, and a row with a single key (the first causal query) gets
  # E = 1 exactly and an exactly zero gradient, as the per-example softmax gives it. A shorter
  # example's keys could underflow under a key of a longer one far above them: that takes a
  # logit spread of ~87, far beyond trained score maps (packed rows check it:
  # `packed_shared_scores.slots_apply`).
  denominator = jnp.einsum('...k,hqk->h...q', key_valid.astype(jnp.float32), weights)
  # An example without keys (length 0) has denominator 0: its output is 0, and so is its
  # gradient (a plain maximum(denominator, tiny) would give 0 * inf = NaN there).
  has_keys = (denominator > 0)[:, None]
  out = numerator / jnp.where(has_keys, denominator[:, None], 1.0)
  return jnp.where(has_keys, out, 0).astype(value.dtype)


def shared_softmax_mix(scores: Array, key_valid: Array, longest: Array, value: Array,
                       causal: bool) -> Array:
  """Per-example softmax over the valid keys, with one softmax of `scores` for the batch.

  Args:
    scores: `[heads, q_len, k_len]` float32, shared by the batch.
    key_valid: `[batch, k_len]` bool.
    longest: scalar, no example has valid keys at or past this index.
    value: `[batch, k_len, heads, head_dim]`.
    causal: query i sees keys j <= i only.

  Returns:
    `[batch, q_len, heads, head_dim]` in `value.dtype`.
  """
  weights = shared_weights(scores, longest, causal)
  return to_keys_minor(mix_keys_minor(weights, key_valid, to_keys_minor(value)))


def shared_scores_attention(logits: Array, bias: Optional[Array], lengths: SequenceLengths,
                            value: Array) -> Array:
  """Attention with batch-independent logits, normalized once per step (see the module doc).

  Args:
    logits: `[1, heads, q_len, k_len]`, the same for every example (random synthesizers).
    bias: `[1, heads, q_len, k_len]` or None.
    lengths: the padding (and causal) mask.
    value: `[batch, k_len, heads, head_dim]`.

  Returns:
    `[batch, q_len, heads, head_dim]` in `value.dtype`.
  """
  return shared_softmax_mix(batch_free_scores(logits, bias), lengths.key_valid(value.shape[1]),
                             jnp.max(lengths.key), value, lengths.causal)
