"""Tests for synth_jax/tasks/vocabularies.py."""
import pytest
import tensorflow as tf

from synth_jax.tasks import vocabularies


def test_default_vocabulary_reads_nothing_until_used(tmp_path):
  missing = str(tmp_path / 'no_such.model')
  vocab = vocabularies.default_vocabulary(missing)  # must not raise
  assert vocab.sentencepiece_model_file == missing
  assert vocab.extra_ids == 100
  with pytest.raises(tf.errors.NotFoundError):
    vocab.encode('hello')


def test_default_vocabulary_is_t5s():
  vocab = vocabularies.default_vocabulary()
  assert vocab.sentencepiece_model_file == (
      'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model')
  assert vocab.extra_ids == 100


def test_byte_vocabulary_puts_sentinels_after_the_bytes():
  vocab = vocabularies.byte_vocabulary()
  assert vocab.vocab_size == 3 + 256 + 100
  assert vocab.encode('hi') == [ord('h') + 3, ord('i') + 3]
  assert vocab.decode([ord('h') + 3, 1, ord('i') + 3]) == 'h'  # stops at EOS


def test_output_features_append_eos_to_both_and_inputs_are_optional():
  vocab = vocabularies.byte_vocabulary()
  features = vocabularies.output_features(vocab)
  assert set(features) == {'inputs', 'targets'}
  assert all(f.add_eos and f.vocabulary is vocab and f.dtype == 'int32'
             for f in features.values())
  assert not features['inputs'].required and features['targets'].required
