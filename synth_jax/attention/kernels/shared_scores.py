"""Batch-shared logits (random synthesizers) normalized once per step, not once per example.

With logits S `[heads, q, k]` shared by the batch and per-example padding m[b, j] (1 for the keys
of example b), E = softmax(S) over all keys gives the per-example softmax exactly:

    out[b, i] = sum_j E[i, j] m[b, j] v[b, j] / sum_j E[i, j] m[b, j]

so the step computes one softmax and two matmuls instead of a `[batch, heads, q, k]` softmax.
"""
from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


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

  The layout keeps the mixed axis minor-most and the heads major-most, so both matmuls are plain
  GEMMs batched over heads; with the batch before the keys XLA transposes around each matmul.

  Args:
    weights: E, `[heads, q_len, k_len]` float32 (`shared_weights`).
    key_valid: `[batch, k_len]` bool.
    value: `[heads, head_dim, batch, k_len]`.

  Returns:
    `[heads, head_dim, batch, q_len]` in `value.dtype`.
  """
  masked_value = jnp.where(key_valid, value, 0)
  numerator = jnp.einsum('hdbk,hqk->hdbq', masked_value, weights.astype(value.dtype),
                         preferred_element_type=jnp.float32)
  # Any per-row scale of E cancels in the ratio, so E may be normalized over the keys of the
  # longest example: it keeps E <= 1, and a row with a single key (the first causal query) gets
  # E = 1 exactly and an exactly zero gradient, as the per-example softmax gives it. A shorter
  # example's keys could underflow only under a logit spread of ~87, far beyond trained maps.
  denominator = jnp.einsum('bk,hqk->hbq', key_valid.astype(jnp.float32), weights)
  # An example without keys (length 0) has denominator 0: its output is 0, and so is its
  # gradient (a plain maximum(denominator, tiny) would give 0 * inf = NaN there).
  has_keys = (denominator > 0)[:, None]
  out = numerator / jnp.where(has_keys, denominator[:, None], 1.0)
  return jnp.where(has_keys, out, 0).astype(value.dtype)


def shared_scores_attention(logits: Array, bias: Optional[Array], key_lengths: Array,
                            value: Array, causal: bool) -> Array:
  """Per-example softmax over the valid keys of batch-shared logits, mixed with `value`.

  Args:
    logits: `[1, heads, q_len, k_len]`, the same for every example.
    bias: `[1, heads, q_len, k_len]` or None.
    key_lengths: `[batch]` int32, each example's keys (padding trails).
    value: `[batch, k_len, heads, head_dim]`.
    causal: query i sees keys j <= i only.

  Returns:
    `[batch, q_len, heads, head_dim]` in `value.dtype`.
  """
  scores = logits[0].astype(jnp.float32)
  if bias is not None:
    scores = scores + bias[0].astype(jnp.float32)
  key_valid = jnp.arange(value.shape[1])[None, :] < key_lengths[:, None]
  weights = shared_weights(scores, jnp.max(key_lengths), causal)
  return to_keys_minor(mix_keys_minor(weights, key_valid, to_keys_minor(value)))
