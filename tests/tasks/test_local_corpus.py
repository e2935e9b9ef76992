"""Tests for synth_jax/tasks/local_corpus.py."""
import os
import re

import numpy as np
import pydoc_data.topics
import pytest
import seqio

from synth_jax.tasks import local_corpus
from synth_jax.tasks import span_corruption
from tests.tasks import task_testing


def _all_paragraphs():
  return [p.strip() for _, text in sorted(pydoc_data.topics.topics.items())
          for p in re.split(r'\n\s*\n', text) if p.strip()]


def test_splits_partition_the_paragraphs_one_in_ten_for_validation():
  train = local_corpus.paragraphs('train')
  validation = local_corpus.paragraphs('validation')
  everything = _all_paragraphs()
  assert validation == everything[9::10]
  assert len(train) + len(validation) == len(everything)
  assert sorted(train + validation) == sorted(everything)
  assert local_corpus.paragraphs('train') == train  # same order every time


def test_unknown_split_raises():
  with pytest.raises(ValueError, match='validation'):
    local_corpus.paragraphs('test')


def test_registered_task_yields_packed_demo_batches_offline():
  task = seqio.get_mixture_or_task('synth_jax_local_span_corruption')
  ds = task.get_dataset(local_corpus.FEATURE_LENGTHS, split='train',
                        shuffle=True, seed=3, shuffle_buffer_size=64)
  ds = seqio.EncDecFeatureConverter(pack=True)(ds,
                                               local_corpus.FEATURE_LENGTHS)
  examples = list(ds.take(16).as_numpy_iterator())
  task_testing.assert_converted(examples, local_corpus.FEATURE_LENGTHS,
                                pack=True)
  vocab = task.output_features['targets'].vocabulary
  first_sentinel = vocab.vocab_size - 1
  assert first_sentinel == 358  # bytes + 100 extra ids
  for ex in examples:
    # Paragraphs are joined before chunking, so rows are (nearly) full.
    assert (ex['encoder_segment_ids'] > 0).mean() > 0.9
    starts = ex['decoder_positions'] == 0
    starts &= ex['decoder_segment_ids'] > 0
    assert (ex['decoder_target_tokens'][starts] == first_sentinel).all()


def test_span_corruption_round_trips_on_the_validation_split():
  task = local_corpus.span_corruption_task()
  ds = task.get_dataset(local_corpus.FEATURE_LENGTHS, split='validation',
                        shuffle=False, seed=0)
  vocab = task.output_features['targets'].vocabulary
  merged = []
  for ex in ds.as_numpy_iterator():
    assert len(ex['inputs']) <= 128 and len(ex['targets']) <= 32
    merged += span_corruption.merge_inputs_and_targets(
        ex['inputs'], ex['targets'], vocab)
  assert vocab.decode(merged) == ''.join(local_corpus.paragraphs('validation'))


def test_same_seed_gives_same_examples():
  task = local_corpus.span_corruption_task()

  def first_inputs(seed):
    ds = task.get_dataset(local_corpus.FEATURE_LENGTHS, split='validation',
                          shuffle=False, seed=seed)
    return [ex['inputs'] for ex in ds.take(10).as_numpy_iterator()]

  first, again, other = first_inputs(1), first_inputs(1), first_inputs(2)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_sentencepiece_vocabulary_is_trained_once_and_lossless(tmp_path):
  vocab = local_corpus.sentencepiece_vocabulary(vocab_size=500,
                                                cache_dir=str(tmp_path))
  (model_file,) = os.listdir(tmp_path)
  mtime = os.path.getmtime(tmp_path / model_file)
  again = local_corpus.sentencepiece_vocabulary(vocab_size=500,
                                                cache_dir=str(tmp_path))
  assert os.listdir(tmp_path) == [model_file]
  assert os.path.getmtime(tmp_path / model_file) == mtime
  assert again.vocab_size == vocab.vocab_size == 600
  assert vocab.decode([599]) == '<extra_id_0>'
  assert vocab.decode([598]) == '<extra_id_1>'
  text = '\n\n'.join(local_corpus.paragraphs('validation')[:30])
  ids = vocab.encode(text)
  # Even 500 pieces cut the length well below one id per byte.
  assert len(ids) < 0.65 * len(text.encode('utf-8'))
  assert vocab.decode(ids) == text

  task = local_corpus.span_corruption_task(vocab)
  ds = task.get_dataset(local_corpus.FEATURE_LENGTHS, split='validation',
                        shuffle=False, seed=0)
  ex = next(ds.as_numpy_iterator())
  merged = span_corruption.merge_inputs_and_targets(ex['inputs'],
                                                    ex['targets'], vocab)
  # The first example is the first chunk of the joined paragraphs' ids (as
  # the task's TF tokenizer splits them; Python's may break ties otherwise).
  joined = [i for p in local_corpus.paragraphs('validation')[:10]
            for i in vocab.encode_tf(p).numpy().tolist()]
  assert len(merged) == 141  # the chunk length for 128 inputs
  assert merged == joined[:len(merged)]
  assert ex['targets'][0] == 599
