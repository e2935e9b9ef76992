"""What an attention does, in numbers: entropy and head similarity of its maps, the spectra of its
query/key projections, and gradient norms.

Used by the diagnostic runs and by `synth-jax attention-maps` on T5 checkpoints. Maps and
projections are read on the host in float64 NumPy (a few examples, one checkpoint);
`gradient_norms` is jnp so a jitted train step can trace it.

Shapes:
  probabilities  `[batch | 1, heads, q_len, k_len]`, each valid query's row summing to 1 over the
                 keys it may see (`attention.Attention.probabilities`, whose masked keys are
                 exactly 0);
  query_valid    `[batch, q_len]` bool, the queries that are not padding;
  visible        `[batch | 1, 1 | heads, q_len, k_len]` bool, the keys each query may see
                 (`attention.Mask.dense()`).
"""
from collections.abc import Mapping
import math
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Singular values below largest * max(matrix dims) * eps are rounding noise of a float32 matrix
# (NumPy's `matrix_rank` tolerance), not part of its rank.
_RANK_EPS = float(np.finfo(np.float32).eps)


def attention_statistics(probabilities: Union[Any, Sequence[Any]],
                         query_valid: Optional[Any] = None,
                         visible: Optional[Any] = None) -> dict[str, Any]:
  """Per-head entropy and head similarity of attention maps.

  Args:
    probabilities: `[batch | 1, heads, q_len, k_len]`, or a list of them (one per layer; then
      `query_valid` and `visible` apply to every layer).
    query_valid: `[batch, q_len]` bool. Default: the queries that see at least one key of
      `visible`, or every query without it. Pass it for padded batches: the core gives a
      padding query (no visible key) a uniform row over all keys, which is not attention.
    visible: the keys each query may see, broadcastable to `probabilities`. Default:
      `probabilities > 0`, exact for the core's maps except where a visible key's probability
      underflows to 0 (logit gaps above ~100), which then only lowers `max_entropy`.

  Returns (for a list: `{'layers': [one dict per layer]}`), with H_i = -sum_j p_ij log p_ij
  (nats, 0 log 0 = 0) the entropy of query i's row and n_i its number of visible keys:
    entropy: `[heads]`, mean of H_i over the valid queries of every example.
    max_entropy: `[heads]`, mean of log n_i over the same queries: uniform attention's entropy.
    normalized_entropy: `[heads]`, mean of H_i / log n_i over valid queries with n_i >= 2 (a
      query with one key has no choice; causal query 0 is one), in [0, 1]: 0 = one key per
      query, 1 = uniform over what it sees. NaN when no query sees two keys.
    head_similarity: `[heads, heads]`, S_hg = mean over examples b of cos(A_bh, A_bg), A_bh the
      example's `[q_len * k_len]` flattened map of head h with padding queries' rows zeroed.
      Maps are nonnegative, so S is in [0, 1]: 1 = the same map up to scale, 0 = disjoint
      supports.
    mean_head_similarity: mean of S_hg over head pairs h < g (1 = identical heads, lower = more
      diverse). NaN with one head. Results written before 2026-12-07 call it `head_diversity`
      (`mean_head_similarity_of` reads either).
  """
  if isinstance(probabilities, (list, tuple)):
    return {'layers': [attention_statistics(p, query_valid, visible) for p in probabilities]}
  p, counts, query_valid = _broadcast(probabilities, query_valid, visible)
  heads = p.shape[1]
  row_entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
  log_counts = np.log(np.maximum(counts, 1))
  choosing = query_valid & (counts >= 2)
  similarity = _head_similarity(p, query_valid)
  pairs = np.triu_indices(heads, k=1)
  return {
      'entropy': mean_over_queries(row_entropy, query_valid),
      'max_entropy': mean_over_queries(log_counts, query_valid),
      'normalized_entropy': mean_over_queries(
          row_entropy / np.where(choosing, log_counts, 1.0), choosing),
      'head_similarity': similarity,
      'mean_head_similarity': float(np.mean(similarity[pairs])) if heads > 1 else math.nan,
  }


def _broadcast(probabilities, query_valid, visible):
  """`(p [batch, heads, q, k] float64, visible-key counts [batch, heads, q], query_valid [batch,
  heads, q])`, each broadcast to the batch of the widest input (`attention_statistics`)."""
  p = np.asarray(jax.device_get(probabilities), np.float64)
  if p.ndim != 4:
    raise ValueError(f'attention probabilities must be [batch, heads, q_len, k_len], got shape '
                     f'{p.shape}.')
  batch = max([p.shape[0]] + [np.shape(x)[0] for x in (query_valid, visible) if x is not None])
  p = np.broadcast_to(p, (batch,) + p.shape[1:])
  visible = p > 0 if visible is None else np.broadcast_to(np.asarray(visible, bool), p.shape)
  counts = visible.sum(-1)
  if query_valid is None:
    query_valid = np.any(counts > 0, axis=1)
  return p, counts, np.broadcast_to(np.asarray(query_valid, bool)[:, None, :], counts.shape)


def mean_over_queries(values, where):
  """Per head, the mean of `values` `[batch, heads, q]` where `where` holds (NaN where none)."""
  total = np.sum(np.where(where, values, 0.0), axis=(0, 2))
  number = np.sum(where, axis=(0, 2))
  return np.where(number > 0, total / np.maximum(number, 1), np.nan)


def _head_similarity(p: np.ndarray, query_valid: np.ndarray) -> np.ndarray:
  """`[heads, heads]` mean over examples of the cosine between heads' flattened maps, padding
  queries' rows zeroed (`p` `[batch, heads, q, k]`, `query_valid` `[batch, heads, q]`)."""
  batch, heads = p.shape[:2]
  maps = np.where(query_valid[..., None], p, 0.0).reshape(batch, heads, -1)
  norms = np.linalg.norm(maps, axis=-1, keepdims=True)
  unit = maps / np.where(norms > 0, norms, 1.0)
  return np.einsum('bhn,bgn->hg', unit, unit) / batch


def mean_head_similarity_of(layer: dict) -> Optional[float]:
  """A recorded layer's `mean_head_similarity`, also from results that named it
  `head_diversity` (a similarity despite that name); None if absent."""
  return layer.get('mean_head_similarity', layer.get('head_diversity'))


def _spectrum(singular_values: np.ndarray, rows: int, cols: int) -> dict[str, np.ndarray]:
  """Singular values `[heads, r]` (descending) -> those, the rank and the condition number.

  The condition number is the largest singular value over the smallest one above the float32
  rank tolerance (largest * max(rows, cols) * eps): singular values a float32 matrix cannot
  tell from 0 are left out, so an exactly rank-deficient head reads as well conditioned on its
  rank and `rank` says how many directions it has.
  """
  largest = singular_values[:, :1]
  kept = singular_values > largest * max(rows, cols) * _RANK_EPS
  smallest = np.min(np.where(kept, singular_values, np.inf), axis=1)
  condition = np.where(largest[:, 0] > 0, largest[:, 0] / np.where(np.isinf(smallest), 1.0,
                                                                    smallest), np.nan)
  return {'singular_values': singular_values, 'condition_number': condition,
          'rank': kept.sum(axis=1)}


def _heads_of(kernel: np.ndarray, num_heads: Optional[int], path: str) -> np.ndarray:
  """A stored query/key kernel as `[heads, embed, head_dim]`."""
  if kernel.ndim == 3:  # [embed, heads, head_dim] (orthogonal's frozen kernels)
    return np.transpose(kernel, (1, 0, 2))
  if kernel.ndim != 2:
    raise ValueError(f'{path}: a query/key kernel must be [embed, heads*head_dim] or '
                     f'[embed, heads, head_dim], got shape {kernel.shape}.')
  if num_heads is None or kernel.shape[1] % num_heads:
    raise ValueError(
        f'{path}: cannot split the [embed, heads*head_dim] = {list(kernel.shape)} kernel into '
        f'heads: pass num_heads= to projection_spectra (the model\'s `T5Config.num_heads`); it '
        f'is inferred only from a frozen [embed, heads, head_dim] kernel or a relpos_bias table.')
  embed = kernel.shape[0]
  return np.transpose(kernel.reshape(embed, num_heads, -1), (1, 0, 2))


def _find_query_key(tree, collection: str, found: dict, path=()):
  """Adds `{path: (W_Q, W_K, collection)}` for each mapping holding `query` and `key` kernels."""
  if not isinstance(tree, Mapping):
    return
  kernels = [tree.get(name) for name in ('query', 'key')]
  kernels = [k.get('kernel') if isinstance(k, Mapping) else k for k in kernels]
  if all(k is not None and not isinstance(k, Mapping) for k in kernels):
    found['/'.join(path)] = (*kernels, collection)
  for name, child in tree.items():
    _find_query_key(child, collection, found, path + (str(name),))


def _infer_num_heads(params, frozen) -> Optional[int]:
  """Heads from a frozen `[embed, heads, head_dim]` kernel or a `[heads, buckets]` relpos table."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(frozen or {})[0]:
    if str(getattr(path[-1], 'key', '')) in ('query', 'key') and np.ndim(leaf) == 3:
      return int(np.shape(leaf)[1])
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if str(getattr(path[-1], 'key', '')) == 'rel_embedding':
      return int(np.shape(leaf)[0])
  return None


def projection_spectra(params, frozen=None, num_heads: Optional[int] = None) -> dict[str, Any]:
  """Per head, the singular values of W_Q, W_K and W_Q W_K^T of every query-key attention.

  An attention module is any mapping in `params` (kernels `query/kernel`, `key/kernel` stored
  `[embed, heads*head_dim]`, T5X's layout) or in `frozen` (orthogonal and frozen-Gaussian
  attention's `query`, `key` `[embed, heads, head_dim]`) that holds both; mixtures' members are
  found under their names. Synthesizers have no query or key and are skipped. W_Q W_K^T is the
  `[embed, embed]` bilinear form of the logits x_i^T W_Q W_K^T x_j: exact for vanilla and
  orthogonal attention (up to their logit scale); for cosine, rotary, neg_l2, hyperbolic and
  linear attention it is the form before their normalization, rotation, distance or feature map.

  Args:
    params, frozen: the 'params' and 'frozen' collections (boxed or not).
    num_heads: splits 2-D kernels into heads; default: inferred from a frozen 3-D kernel or a
      `relpos_bias/rel_embedding` `[heads, buckets]` table in the trees.

  Returns:
    `{module path ('encoder/layers_0/attention'): {'collection': 'params' | 'frozen',
    'num_heads', 'head_dim', 'query', 'key', 'query_key'}}`, each of the last three
    `{'singular_values': [heads, r] descending, 'condition_number': [heads], 'rank': [heads]}`
    with r = min(embed, head_dim): W_Q W_K^T has rank <= head_dim, so its top r values are all
    its nonzero ones (computed as the singular values of R_Q R_K^T, from W = Q R per head).
    The condition number is largest over smallest singular value above the float32 rank
    tolerance (largest * max(matrix dims) * eps), so exact zeros do not make it infinite.
  """
  params, frozen = nn.unbox(params), nn.unbox(frozen or {})
  found = {}
  _find_query_key(params, 'params', found)
  _find_query_key(frozen, 'frozen', found)
  if num_heads is None:
    num_heads = _infer_num_heads(params, frozen)
  spectra = {}
  for path, (query, key, collection) in sorted(found.items()):
    w_q, w_k = (_heads_of(np.asarray(jax.device_get(w), np.float64), num_heads, path)
                for w in (query, key))
    heads, embed, head_dim = w_q.shape
    _, r_q = np.linalg.qr(w_q)
    _, r_k = np.linalg.qr(w_k)
    spectra[path] = {
        'collection': collection, 'num_heads': heads, 'head_dim': head_dim,
        'query': _spectrum(np.linalg.svd(w_q, compute_uv=False), embed, head_dim),
        'key': _spectrum(np.linalg.svd(w_k, compute_uv=False), embed, head_dim),
        'query_key': _spectrum(np.linalg.svd(r_q @ np.swapaxes(r_k, -1, -2), compute_uv=False),
                               embed, embed),
    }
  return spectra


def gradient_norms(grads) -> dict[str, Any]:
  """L2 norms of a gradient tree: `{'global': scalar, 'modules': {top-level name: scalar}}`.

  `grads` is shaped like the 'params' collection, so its top-level keys are the model's
  modules (`encoder`, `decoder`, `token_embedder`; or `layers_0`, ...). jnp float32 scalars,
  usable inside a jitted step; `global` equals `optax.global_norm(grads)`.
  """
  def squared(tree):
    return sum((jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in jax.tree.leaves(tree)),
               jnp.float32(0.0))
  parts = {str(name): squared(sub) for name, sub in grads.items()} \
      if isinstance(grads, Mapping) else {}
  total = sum(parts.values(), jnp.float32(0.0)) if parts else squared(grads)
  return {'global': jnp.sqrt(total), 'modules': {k: jnp.sqrt(v) for k, v in parts.items()}}


def as_json(tree):
  """`tree` with arrays as (nested) lists, NumPy scalars as Python numbers and NaN/inf as None."""
  if isinstance(tree, Mapping):
    return {str(k): as_json(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [as_json(v) for v in tree]
  if isinstance(tree, (np.ndarray, np.generic, jax.Array)):
    return as_json(np.asarray(tree).tolist())
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree
