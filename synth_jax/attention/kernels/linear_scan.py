"""Linear attention in O(length) memory: the normalized kernel as sums over keys.

Given log-features log phi(q), log phi(k) `[batch, len, heads, m]`,

    out_i = sum_j (phi(q_i) . phi(k_j)) v_j / sum_j phi(q_i) . phi(k_j),  j visible to i

A 1 appended to every value makes numerator and denominator one sum (its last channel).

  * non-causal, unpacked: the sum over keys is one `[heads, m, head_dim + 1]` matrix per example,
    phi(K)^T V, which each query reads.
  * causal: a scan over chunks of C tokens carries the prefix sum S
    `[batch, heads, m, head_dim + 1]`; inside a chunk, the masked C x C kernel. Memory
    O(L/C * m * d + L * (C + m)) (the backward pass keeps one S and one C x C block per chunk),
    where a cumulative sum of outer products keeps O(L * m * d) and the reference O(L^2).
  * packed self-attention: a sum restarts where a new segment starts (segments are contiguous runs,
    as seqio packs them). Non-causal packed rows add to that inclusive scan an exclusive scan of
    the reversed row: the keys after each query in its segment.

Range: phi spans e^(+-100) for large inputs, beyond float32. Every exp is shifted by a maximum
over keys the query can see (all valid keys; in the scan, the running maximum of the carried keys,
and within a chunk the log-space kernel as the reference computes it), so each sum is scaled by a
known factor, the denominator of a query that sees any key is >= 1, and the gradient stays finite.

`applies` is False for masks this cannot express, and the reference runs: a caller's dense mask,
decode steps (linear attention keeps its own recurrent state), packed cross-attention (query and
key segments differ), causal masks whose queries are not the keys.
"""
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import masks

Array = jax.Array
_max = lambda x, axis: jax.lax.stop_gradient(jnp.max(x, axis=axis))  # a shift that cancels


def applies(mask: masks.Mask, q_len: int) -> bool:
  """Whether `linear_attention` computes this mask exactly."""
  if mask.explicit is not None or mask.step is not None:
    return False
  if mask.query_segments is not None and not mask.self_attention:
    return False
  return not mask.causal or q_len == mask.key_valid.shape[1]


def ratio(numerator: Array, denominator: Array) -> Array:
  """numerator / denominator, and 0 where no key is visible (denominator 0), NaN-free gradients."""
  has_keys = denominator > 0
  return jnp.where(has_keys, numerator / jnp.where(has_keys, denominator, 1.0), 0.0)


def shifted_features(log_q: Array, log_k: Array, key_valid: Array) -> tuple[Array, Array]:
  """(phi(q), phi(k)) up to factors the normalized kernel cancels; padded keys exactly 0.

  Key feature r is divided by e^(c_r), c_r its largest value over the valid keys, and query
  feature r multiplied by it (phi(q) . phi(k) unchanged); then each query is divided by its
  largest feature. The key attaining c_r and the query's largest feature give a term 1: a query
  that sees every valid key has a denominator >= 1.
  """
  valid = key_valid[:, :, None, None]
  shift = _max(jnp.where(valid, log_k, core.NEG_INF), 1)[:, None]
  log_q = log_q + shift
  log_q = log_q - _max(log_q, -1)[..., None]
  return jnp.exp(log_q), jnp.exp(jnp.where(valid, log_k - shift, core.NEG_INF))


def prefix_sums(log_q: Array, log_k: Array, value: Array, segments: Array, key_valid: Array,
                chunk_size: int, strict: bool = False) -> tuple[Array, Array]:
  """sum_{j <= i (j < i if strict), same segment, valid} (phi(q_i) . phi(k_j)) value_j.

  Args:
    log_q, log_k: `[batch, len, heads, m]` float32 log-features.
    value: `[batch, len, heads, e]` float32.
    segments: `[batch, len]` int, contiguous runs of equal ids.
    key_valid: `[batch, len]` bool.
    chunk_size: C, tokens per scan step; need not divide len (the tail is padded, invalid).
    strict: exclude the diagonal (j < i).

  Returns:
    (sums `[batch, len, heads, e]`, log_scale `[batch, len, heads]`): the sum is
    sums * exp(log_scale); sums' largest kernel term is 1 where any key is visible.
  """
  batch, length, heads, features = log_q.shape
  chunk = min(chunk_size, length)
  chunks = -(-length // chunk)

  def split(x):  # [batch, len, ...] -> [chunks, batch, chunk, ...]
    x = jnp.pad(x, [(0, 0), (0, chunks * chunk - length)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((batch, chunks, chunk) + x.shape[2:]), 1, 0)

  order = jnp.tril(jnp.ones((chunk, chunk), bool), -1 if strict else 0)
  swap = lambda x: jnp.swapaxes(x, 1, 2)  # [b, i, h] <-> [b, h, i]

  def step(carry, inputs):
    # state: sum_j e^(lk_j - c) v_j^T over the keys of `state_segment` before this chunk, with
    # c `[b, h, m]` their largest log-feature (NEG_INF for none).
    state, c, state_segment = carry
    lq, lk, v, segment, valid = inputs
    # Keys of earlier chunks, scaled by e^(inter_scale): phi(q_i) e^c read S.
    continues = (segment == state_segment[:, None])[:, :, None]  # [b, i, 1]
    shifted = lq + c[:, None]
    inter_scale = _max(shifted, -1)  # [b, i, h]
    inter = jnp.einsum('bihm,bhme->bihe', jnp.exp(shifted - inter_scale[..., None]), state)
    inter = jnp.where(continues[..., None], inter, 0.0)
    inter_scale = jnp.where(continues, inter_scale, core.NEG_INF)
    # Keys of this chunk: log(phi(q_i) . phi(k_j)) as the reference's logits, then a softmax-like
    # shift by each query's largest visible one.
    q_max, k_max = _max(lq, -1), _max(lk, -1)  # [b, i, h], [b, j, h]
    kernel = jnp.einsum('bihm,bjhm->bhij', jnp.exp(lq - q_max[..., None]),
                        jnp.exp(lk - k_max[..., None]))
    logits = (jnp.log(jnp.maximum(kernel, jnp.finfo(jnp.float32).tiny))
              + swap(q_max)[..., None] + swap(k_max)[:, :, None, :])
    visible = ((segment[:, :, None] == segment[:, None, :]) & order & valid[:, None, :])[:, None]
    logits = jnp.where(visible, logits, core.NEG_INF)
    intra_scale = _max(logits, -1)  # [b, h, i]
    weights = jnp.where(visible, jnp.exp(logits - intra_scale[..., None]), 0.0)
    intra = jnp.einsum('bhij,bjhe->bihe', weights, v)
    intra_scale = swap(intra_scale)
    scale = jnp.maximum(inter_scale, intra_scale)
    sums = (inter * jnp.exp(inter_scale - scale)[..., None]
            + intra * jnp.exp(intra_scale - scale)[..., None])
    # The state after this chunk: the keys of its last segment, rescaled to the new maximum.
    last = segment[:, -1]
    keep = (state_segment == last)[:, None, None]
    in_last = ((segment == last[:, None]) & valid)[:, :, None, None]
    old_c = jnp.where(keep, c, core.NEG_INF)
    new_c = jnp.maximum(old_c, _max(jnp.where(in_last, lk, core.NEG_INF), 1))
    added = jnp.exp(jnp.where(in_last, lk - new_c[:, None], core.NEG_INF))
    state = (jnp.where(keep[..., None], state, 0.0) * jnp.exp(old_c - new_c)[..., None]
             + jnp.einsum('bjhm,bjhe->bhme', added, v))
    return (state, new_c, last), (sums, scale)

  start = (jnp.zeros((batch, heads, features, value.shape[-1]), jnp.float32),
           jnp.full((batch, heads, features), core.NEG_INF, jnp.float32), segments[:, 0])
  rows = tuple(map(split, (log_q, log_k, value, segments, key_valid)))
  _, (sums, scale) = jax.lax.scan(step, start, rows)
  unsplit = lambda x: jnp.moveaxis(x, 0, 1).reshape((batch, chunks * chunk) + x.shape[3:])
  return unsplit(sums)[:, :length], unsplit(scale)[:, :length]


def linear_attention(log_q: Array, log_k: Array, value: Array, mask: masks.Mask,
                     chunk_size: int) -> Array:
  """The normalized kernel attention of the module docstring, for a mask `applies` accepts.

  Args:
    log_q: log phi(q) `[batch, q_len, heads, m]`; log_k: log phi(k) `[batch, k_len, heads, m]`.
    value: `[batch, k_len, heads, head_dim]`.
    chunk_size: tokens per step of the causal / packed scan.

  Returns:
    `[batch, q_len, heads, head_dim]` in `value.dtype`; 0 for queries that see no key.
  """
  dtype = value.dtype
  value = value.astype(jnp.float32)
  value = jnp.concatenate([value, jnp.ones_like(value[..., :1])], axis=-1)
  if not mask.causal and mask.query_segments is None:
    phi_q, phi_k = shifted_features(log_q, log_k, mask.key_valid)
    sums = jnp.einsum('bqhm,bhme->bqhe', phi_q, jnp.einsum('bkhm,bkhe->bhme', phi_k, value))
  else:
    segments = mask.query_segments
    if segments is None:
      segments = jnp.zeros(mask.query_valid.shape, jnp.int32)
    row = (log_q, log_k, value, segments, mask.key_valid)
    sums, scale = prefix_sums(*row, chunk_size)
    if not mask.causal:
      reverse = lambda x: jnp.flip(x, axis=1)
      after, after_scale = map(reverse, prefix_sums(*map(reverse, row), chunk_size, strict=True))
      total = jnp.maximum(scale, after_scale)[..., None]
      sums = (sums * jnp.exp(scale[..., None] - total)
              + after * jnp.exp(after_scale[..., None] - total))
  return ratio(sums[..., :-1], sums[..., -1:]).astype(dtype)
