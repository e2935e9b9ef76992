"""Attention statistics against plain NumPy: entropy, head similarity, projection spectra,
gradient norms."""
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from synth_jax import attention
from synth_jax.attention import core
from synth_jax.diagnostics import statistics
from tests import fixtures

EMBED, HEADS, HEAD_DIM = 16, 3, 4


def causal_uniform(batch, heads, length):
  """`[batch, heads, length, length]`: query i uniform over keys 0..i."""
  row = np.tril(np.ones((length, length)))
  return np.broadcast_to(row / row.sum(-1, keepdims=True), (batch, heads, length, length))


def build(name, **options):
  return attention.build(name, num_heads=HEADS, head_dim=HEAD_DIM, max_query_length=8,
                         max_key_length=8, **options)


def init(module, seed=0):
  x = jax.random.normal(jax.random.key(seed), (2, 6, EMBED))
  return nn.unbox(module.init(jax.random.key(seed), x, x))


def test_uniform_rows_have_entropy_log_of_their_visible_keys():
  length = 5
  stats = statistics.attention_statistics(causal_uniform(2, HEADS, length))
  expected = np.mean(np.log(np.arange(1, length + 1)))  # query i sees i + 1 keys
  np.testing.assert_allclose(stats['entropy'], expected, rtol=1e-12)
  np.testing.assert_allclose(stats['max_entropy'], expected, rtol=1e-12)
  np.testing.assert_allclose(stats['normalized_entropy'], 1.0, rtol=1e-12)


def test_one_hot_rows_have_zero_entropy():
  p = np.zeros((2, HEADS, 4, 6))
  p[..., 3] = 1.0
  stats = statistics.attention_statistics(p, visible=np.ones((2, 1, 4, 6), bool))
  np.testing.assert_array_equal(stats['entropy'], 0.0)
  np.testing.assert_array_equal(stats['normalized_entropy'], 0.0)
  np.testing.assert_allclose(stats['max_entropy'], math.log(6))


def test_padding_queries_are_left_out_and_entropy_matches_a_numpy_loop():
  """A real module's maps over a padded batch: the padding query's uniform row counts nowhere."""
  module = build('vanilla')
  x = jax.random.normal(jax.random.key(1), (2, 6, EMBED))
  tokens = jnp.array([[3, 4, 5, 6, 7, 8], [3, 4, 5, 0, 0, 0]])
  mask = attention.Mask.for_self_attention(tokens)
  p = np.asarray(module.apply(init(module), x, x, mask, None, method='probabilities'), np.float64)
  valid, visible = np.asarray(mask.query_valid), np.asarray(mask.dense())
  stats = statistics.attention_statistics(p, valid, visible)
  for h in range(HEADS):
    entropies, normalized = [], []
    for b in range(2):
      for i in np.flatnonzero(valid[b]):
        row = p[b, h, i][visible[b, 0, i]]
        entropies.append(-np.sum(row * np.log(row)))
        normalized.append(entropies[-1] / np.log(len(row)))
    np.testing.assert_allclose(stats['entropy'][h], np.mean(entropies), rtol=1e-9)
    np.testing.assert_allclose(stats['normalized_entropy'][h], np.mean(normalized), rtol=1e-9)
    assert 0 < stats['entropy'][h] < stats['max_entropy'][h] <= math.log(6)
  # Without query_valid, visible alone excludes the padding queries (they see no key).
  np.testing.assert_allclose(statistics.attention_statistics(p, visible=visible)['entropy'],
                             stats['entropy'])


def test_identical_heads_have_diversity_one():
  rng = np.random.default_rng(0)
  one = rng.dirichlet(np.ones(7), size=(2, 1, 5))
  stats = statistics.attention_statistics(np.repeat(one, 4, axis=1))
  assert stats['mean_head_similarity'] == pytest.approx(1.0, abs=1e-12)
  np.testing.assert_allclose(stats['head_similarity'], np.ones((4, 4)), atol=1e-12)


def test_heads_on_disjoint_keys_have_diversity_zero():
  p = np.zeros((2, 2, 4, 4))
  p[:, 0, :, 0] = 1.0  # head 0: everything on key 0
  p[:, 1, :, 1:] = 1 / 3  # head 1: uniform over keys 1..3
  assert statistics.attention_statistics(p)['mean_head_similarity'] == 0.0


def test_head_similarity_is_the_mean_cosine_of_flattened_maps():
  rng = np.random.default_rng(1)
  p = rng.dirichlet(np.ones(5), size=(3, 4, 6))
  valid = np.ones((3, 6), bool)
  valid[2, 4:] = False  # padding queries' rows are zeroed before flattening
  stats = statistics.attention_statistics(p, valid)
  cosines = []
  for h in range(4):
    for g in range(h + 1, 4):
      for b in range(3):
        a, c = (np.where(valid[b][:, None], p[b, k], 0).ravel() for k in (h, g))
        cosines.append(a @ c / np.linalg.norm(a) / np.linalg.norm(c))
  assert stats['mean_head_similarity'] == pytest.approx(np.mean(cosines), rel=1e-12)


def test_a_list_gives_one_entry_per_layer_and_broadcasts_shared_maps():
  shared = causal_uniform(1, 2, 4)  # a synthesizer's [1, heads, q, k] table
  stats = statistics.attention_statistics([shared, shared], np.ones((3, 4), bool))
  assert len(stats['layers']) == 2
  np.testing.assert_allclose(stats['layers'][1]['normalized_entropy'], 1.0)


def test_orthogonal_attention_projections_have_unit_singular_values():
  variables = init(build('orthogonal'))
  spectra = statistics.projection_spectra(variables['params'], variables[core.FROZEN])
  assert list(spectra) == ['']  # the module itself is the root of its tree
  head = spectra['']
  assert (head['collection'], head['num_heads'], head['head_dim']) == ('frozen', HEADS, HEAD_DIM)
  for name in ('query', 'key', 'query_key'):
    assert head[name]['singular_values'].shape == (HEADS, HEAD_DIM)
    np.testing.assert_allclose(head[name]['singular_values'], 1.0, atol=1e-5)
    np.testing.assert_allclose(head[name]['condition_number'], 1.0, atol=1e-5)
    np.testing.assert_array_equal(head[name]['rank'], HEAD_DIM)


def test_vanilla_singular_values_equal_numpy_svd_of_each_head():
  params = init(build('vanilla'), seed=3)['params']
  spectra = statistics.projection_spectra(params, num_heads=HEADS)['']
  w = {k: np.asarray(params[k]['kernel'], np.float64).reshape(EMBED, HEADS, HEAD_DIM)
       for k in ('query', 'key')}
  for h in range(HEADS):
    for name in ('query', 'key'):
      expected = np.linalg.svd(w[name][:, h], compute_uv=False)
      np.testing.assert_allclose(spectra[name]['singular_values'][h], expected, rtol=1e-10)
      assert spectra[name]['condition_number'][h] == pytest.approx(expected[0] / expected[-1])
    product = np.linalg.svd(w['query'][:, h] @ w['key'][:, h].T, compute_uv=False)
    # [embed, embed] but rank <= head_dim: the top head_dim values are all the nonzero ones.
    np.testing.assert_allclose(spectra['query_key']['singular_values'][h], product[:HEAD_DIM],
                               rtol=1e-9)
    assert np.all(product[HEAD_DIM:] < 1e-12 * product[0])
    assert spectra['query_key']['rank'][h] == HEAD_DIM


def test_condition_number_ignores_exact_zeros_and_reports_the_rank():
  kernel = np.asarray(init(build('vanilla'))['params']['query']['kernel']).reshape(
      EMBED, HEADS, HEAD_DIM).copy()
  kernel[:, 0, -1] = kernel[:, 0, 0]  # head 0: two equal columns, rank HEAD_DIM - 1
  spectra = statistics.projection_spectra({'query': kernel, 'key': kernel})['']
  values = spectra['query']['singular_values'][0]
  assert spectra['query']['rank'][0] == HEAD_DIM - 1
  assert spectra['query']['condition_number'][0] == pytest.approx(values[0] / values[-2])
  assert np.isfinite(spectra['query_key']['condition_number']).all()


def test_synthesizers_are_skipped_and_mixture_members_found_by_name():
  variables = init(build('random+vanilla'))
  spectra = statistics.projection_spectra(variables['params'], num_heads=HEADS)
  assert list(spectra) == ['vanilla']
  assert statistics.projection_spectra(init(build('dense'))['params'], num_heads=HEADS) == {}


def test_a_t5_tree_infers_heads_from_its_relative_position_table():
  model = fixtures.tiny_model('random+vanilla')  # no frozen 3-D kernel to read heads from
  tokens = jnp.ones((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens, tokens))['params']
  spectra = statistics.projection_spectra(params)
  assert sorted(spectra) == ['decoder/layers_0/encoder_decoder_attention',
                             'decoder/layers_0/self_attention/vanilla',
                             'encoder/layers_0/attention/vanilla']
  cross = spectra['decoder/layers_0/encoder_decoder_attention']
  assert (cross['collection'], cross['num_heads'], cross['head_dim']) == ('params', 2, 16)


def test_two_dimensional_kernels_without_a_head_count_are_a_clear_error():
  params = init(build('vanilla'))['params']
  with pytest.raises(ValueError, match='pass num_heads='):
    statistics.projection_spectra(params)


def test_gradient_norms_match_numpy_and_optax():
  rng = np.random.default_rng(2)
  grads = {'encoder': {'a': rng.normal(size=(3, 4)), 'b': rng.normal(size=(5,))},
           'decoder': {'c': rng.normal(size=(2, 2, 2))}, 'token_embedder': rng.normal(size=(7,))}
  grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
  norms = jax.jit(statistics.gradient_norms)(grads)
  flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
  for name in grads:
    assert float(norms['modules'][name]) == pytest.approx(np.linalg.norm(flat(grads[name])),
                                                          rel=1e-6)
  assert float(norms['global']) == pytest.approx(np.linalg.norm(flat(grads)), rel=1e-6)
  assert float(norms['global']) == pytest.approx(float(optax.global_norm(grads)), rel=1e-6)


def test_as_json_turns_arrays_and_nan_into_strict_json():
  stats = statistics.attention_statistics(np.ones((1, 1, 2, 1)))  # one head: diversity NaN
  text = json.dumps(statistics.as_json(stats), allow_nan=False)
  assert json.loads(text)['mean_head_similarity'] is None
  assert json.loads(text)['entropy'] == [0.0]


def test_the_mean_head_similarity_is_read_also_under_its_old_name():
  """Results written before the rename called the mean pairwise similarity `head_diversity`."""
  assert statistics.mean_head_similarity_of({'mean_head_similarity': 0.3}) == 0.3
  assert statistics.mean_head_similarity_of({'head_diversity': 0.4}) == 0.4
  assert statistics.mean_head_similarity_of({}) is None
