"""Tests for synth_jax/tasks/span_corruption.py."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from synth_jax.tasks import span_corruption as sc
from synth_jax.tasks import vocabularies

# Ids 3..258 are bytes, 259..358 sentinels.
VOCAB = vocabularies.byte_vocabulary()
FIRST_SENTINEL = 358
T5_LENGTHS = {'inputs': 512, 'targets': 114}


def _documents(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, 259, size=n).tolist() for n in lengths]


def _dataset(documents):
  flat = np.array([t for doc in documents for t in doc], np.int32)
  ragged = tf.RaggedTensor.from_row_lengths(flat,
                                            [len(doc) for doc in documents])
  return tf.data.Dataset.from_tensor_slices({'targets': ragged})


def _corrupt(documents, lengths=None, seed=0, append_eos=False):
  features = vocabularies.output_features(VOCAB)
  with seqio.map_seed_manager(seed):
    ds = sc.span_corruption(_dataset(documents), lengths or T5_LENGTHS,
                            features)
  if append_eos:
    ds = seqio.preprocessors.append_eos_after_trim(
        ds, output_features=features, sequence_length=lengths or T5_LENGTHS)
  return list(ds.as_numpy_iterator())


def _is_sentinel(token):
  return token > FIRST_SENTINEL - VOCAB.extra_ids


def _target_spans(targets):
  """Lengths of the spans in a targets sequence (no EOS)."""
  spans = []
  for token in targets:
    if _is_sentinel(token):
      spans.append(0)
    else:
      spans[-1] += 1
  return spans


def test_lengths_for_512_inputs_are_t5_pretraining_lengths():
  assert sc.span_corruption_lengths(512) == (568, 114, 28)


@pytest.mark.parametrize('inputs_length', [8, 32, 100, 128, 512])
def test_every_chunk_up_to_tokens_length_fits_and_one_more_does_not(
    inputs_length):
  tokens_length, targets_length, max_spans = sc.span_corruption_lengths(
      inputs_length)
  fits = []
  for length in range(1, tokens_length + 1):
    noise, spans = sc.noise_counts(length)
    fits.append((length - noise + spans + 1, noise + spans + 1, spans))
  assert max(f[0] for f in fits) == inputs_length
  assert max(f[1] for f in fits) == targets_length
  assert max(f[2] for f in fits) == max_spans
  noise, spans = sc.noise_counts(tokens_length + 1)
  assert tokens_length + 1 - noise + spans + 1 > inputs_length


def test_graph_noise_counts_match_python_arithmetic():
  lengths = tf.data.Dataset.range(0, 700)

  def counts(length):
    length = tf.cast(length, tf.int32)
    mask = sc.random_spans_noise_mask(length, [(1, 2), (3, 4)])
    starts = tf.logical_and(mask, tf.logical_not(
        tf.concat([[False], mask[:-1]], 0)))
    return (length, tf.reduce_sum(tf.cast(mask, tf.int32)),
            tf.reduce_sum(tf.cast(starts, tf.int32)), tf.size(mask))

  for length, noise, spans, size in lengths.map(counts).as_numpy_iterator():
    assert (noise, spans) == sc.noise_counts(int(length)), length
    assert size == length


@pytest.mark.parametrize('length,noise,spans', [
    # f32: 190 * 0.15 = 28.500002 -> 29, 29 / 3 -> 10 (f64: 28.5 -> 28, 9).
    (190, 29, 10),
    # f32: 350 * 0.15 = 52.500004 -> 53, 53 / 3 -> 18 (f64: 52.5 -> 52, 17).
    (350, 53, 18),
    # f32: 390 * 0.15 = 58.500004 -> 59, 59 / 3 -> 20 (f64: 58.5 -> 58, 19).
    (390, 59, 20),
    # f32 and f64 agree: 568 * 0.15 = 85.2 -> 85, 85 / 3 = 28.33 -> 28.
    (568, 85, 28),
])
def test_noise_counts_round_in_float32_as_t5_does(length, noise, spans):
  assert sc.noise_counts(length) == (noise, spans)
  mask = sc.random_spans_noise_mask(length, [(1, 2), (3, 4)]).numpy()
  starts = mask & ~np.concatenate([[False], mask[:-1]])
  assert (mask.sum(), starts.sum()) == (noise, spans)


def test_corrupt_spans_replaces_spans_with_descending_sentinels():
  tokens = tf.range(10, 18)
  noise_mask = tf.constant([0, 1, 1, 0, 0, 1, 1, 1]) > 0
  inputs, targets = sc.corrupt_spans(tokens, noise_mask, FIRST_SENTINEL)
  np.testing.assert_array_equal(inputs, [10, 358, 13, 14, 357])
  np.testing.assert_array_equal(targets, [358, 11, 12, 357, 15, 16, 17])


def test_concatenate_tokens_drops_id_0_tokens_as_t5_does():
  documents = [[0, 5, 0, 6], [7, 0], [0], [8, 9, 0]]
  ds = sc.concatenate_tokens(_dataset(documents), documents_per_stream=2)
  streams = [ex['targets'].tolist() for ex in ds.as_numpy_iterator()]
  assert streams == [[5, 6, 7], [8, 9]]


def _chunks(documents, seed, chunk_length):
  with seqio.map_seed_manager(seed):
    ds = sc.select_random_chunk(_dataset(documents), chunk_length)
  return [ex['targets'].tolist() for ex in ds.as_numpy_iterator()]


def test_select_random_chunk_keeps_one_aligned_chunk_per_document():
  # 23 tokens in chunks of 5: starts 0, 5, 10, 15 and a 3-token tail at 20.
  long_document = list(range(10, 33))
  documents = [long_document] * 40 + [[], [7, 8, 9]]
  chunks = _chunks(documents, seed=1, chunk_length=5)
  assert len(chunks) == 41 and chunks[-1] == [7, 8, 9]  # [] is dropped
  starts = [chunk[0] - 10 for chunk in chunks[:-1]]
  for start, chunk in zip(starts, chunks):
    assert chunk == long_document[start:start + 5]
  assert set(starts) == {0, 5, 10, 15, 20}
  assert _chunks(documents, seed=1, chunk_length=5) == chunks
  assert _chunks(documents, seed=2, chunk_length=5) != chunks


def test_merge_restores_original_tokens():
  documents = _documents([0, 1, 2, 3, 20, 567, 568, 569, 1500])
  examples = _corrupt(documents, append_eos=True)
  merged = []
  for ex in examples:
    merged.extend(sc.merge_inputs_and_targets(ex['inputs'], ex['targets'],
                                              VOCAB))
  assert merged == [t for doc in documents for t in doc]


def test_merge_ignores_padding_after_eos():
  inputs = [10, 358, 13, 14, 357, 1, 0, 0]
  targets = [358, 11, 12, 357, 15, 16, 17, 1, 0]
  assert sc.merge_inputs_and_targets(inputs, targets, VOCAB) == list(
      range(10, 18))


@pytest.mark.parametrize('inputs,targets', [
    ([10, 358, 13], [11, 12]),  # targets do not start with a sentinel
    ([10, 357, 13], [358, 11]),  # sentinel without a span
    ([10, 13], [358, 11]),  # span without a sentinel
])
def test_merge_rejects_inconsistent_pairs(inputs, targets):
  with pytest.raises(ValueError):
    sc.merge_inputs_and_targets(inputs, targets, VOCAB)


def test_corrupted_chunks_fit_t5_lengths_exactly():
  examples = _corrupt(_documents([568 * 3, 100]), append_eos=True)
  lengths = [(len(ex['inputs']), len(ex['targets'])) for ex in examples]
  assert lengths[:3] == [(512, 114)] * 3
  assert all(i <= 512 and t <= 114 for i, t in lengths)
  assert all(ex['inputs'][-1] == 1 and ex['targets'][-1] == 1
             for ex in examples)


def test_noise_statistics_match_t5_objective():
  rng = np.random.default_rng(1)
  documents = _documents(rng.integers(60, 569, size=1500), seed=2)
  examples = _corrupt(documents, seed=3)
  spans = [_target_spans(ex['targets']) for ex in examples]
  num_tokens = sum(len(doc) for doc in documents)
  span_lengths = np.array([s for ex_spans in spans for s in ex_spans])
  assert abs(span_lengths.sum() / num_tokens - 0.15) < 0.002
  assert abs(span_lengths.mean() - 3.0) < 0.05
  # Spans per example: round(noise / 3), exactly.
  for doc, ex_spans in zip(documents, spans):
    assert (sum(ex_spans), len(ex_spans)) == sc.noise_counts(len(doc))
  # Span lengths are random, not all 3: a uniform composition of n noise
  # tokens into n/3 parts has about a third of its parts of length 1.
  assert 0.25 < np.mean(span_lengths == 1) < 0.42
  assert span_lengths.max() >= 8


def _noise_mask(example):
  """Recovers the noise mask from a corrupted example (no EOS)."""
  spans = iter(_target_spans(example['targets']))
  mask = []
  for token in example['inputs']:
    mask += [True] * next(spans) if _is_sentinel(token) else [False]
  return mask


def test_noise_is_spread_over_positions_between_fixed_ends():
  masks = np.array([_noise_mask(ex)
                    for ex in _corrupt(_documents([400] * 400), seed=5)])
  assert masks.shape == (400, 400)
  # Spans alternate starting with non-noise, so the sequence starts clean and
  # ends in noise; in between every quarter is noised at the same rate.
  assert not masks[:, 0].any() and masks[:, -1].all()
  quarters = masks[:, 2:-2].reshape(400, 4, -1).mean(axis=(0, 2))
  np.testing.assert_allclose(quarters, 0.15, atol=0.02)


def test_same_seed_gives_same_corruption_and_other_seed_does_not():
  documents = _documents([300] * 20)
  first = _corrupt(documents, seed=11)
  again = _corrupt(documents, seed=11)
  other = _corrupt(documents, seed=12)
  same = [np.array_equal(a['inputs'], b['inputs'])
          for a, b in zip(first, again)]
  differs = [np.array_equal(a['inputs'], b['inputs'])
             for a, b in zip(first, other)]
  assert all(same)
  assert not any(differs)


def test_vocabulary_without_extra_ids_raises_naming_the_fix():
  with pytest.raises(ValueError, match='extra_ids=100'):
    sc.first_sentinel_id(seqio.ByteVocabulary())


def test_too_few_extra_ids_for_the_spans_raises():
  features = vocabularies.output_features(vocabularies.byte_vocabulary(10))
  with pytest.raises(ValueError, match='28 noise spans'):
    sc.span_corruption(_dataset([[5]]), T5_LENGTHS, features)


def test_targets_length_too_short_raises_with_needed_length():
  with pytest.raises(ValueError, match='at least 114'):
    sc.span_corruption(_dataset([[5]]), {'inputs': 512, 'targets': 100},
                       vocabularies.output_features(VOCAB))


def test_missing_feature_lengths_raise():
  with pytest.raises(ValueError, match='sequence_length'):
    sc.span_corruption(_dataset([[5]]), None,
                       vocabularies.output_features(VOCAB))
