"""Tests for synth_jax/tasks/c4.py."""
import numpy as np
import pydoc_data.topics
import seqio
import tensorflow as tf

from synth_jax.tasks import c4
from synth_jax.tasks import span_corruption
from synth_jax.tasks import vocabularies
from tests.tasks import task_testing

VOCAB = vocabularies.byte_vocabulary()
FIRST_SENTINEL = VOCAB.vocab_size - 1
# Three documents: several full 568-token chunks, a short one, a tiny one.
DOCUMENTS = [pydoc_data.topics.topics['assignment'][:2000],
             pydoc_data.topics.topics['assert'][:300], 'Hi.']
# 70,000 ASCII bytes: one full 65,536-token chunk and a 4,464-token tail.
LONG_DOCUMENT = ''.join(
    text for _, text in sorted(pydoc_data.topics.topics.items())).encode(
        'ascii', 'ignore').decode('ascii')[:70000]


def _as_dataset(builder, split, **unused_kwargs):
  assert (builder.name, split) == ('c4', 'train')
  return tf.data.Dataset.from_tensor_slices(
      {'text': DOCUMENTS, 'url': ['https://example.com'] * len(DOCUMENTS)})


def test_registered_task_reads_c4_en_with_t5_vocabulary():
  task = seqio.get_mixture_or_task('synth_jax_c4_span_corruption')
  assert task.source.tfds_dataset.name == 'c4/en:3.1.0'
  vocab = task.output_features['inputs'].vocabulary
  assert vocab.sentencepiece_model_file == (
      'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model')
  assert vocab.extra_ids == 100
  assert set(task.splits) == {'train', 'validation'}


def test_documents_round_trip_through_the_task_within_t5_lengths():
  examples = task_testing.task_examples(
      c4.span_corruption_task(VOCAB), 'train', c4.FEATURE_LENGTHS,
      as_dataset_fn=_as_dataset)
  lengths = [(len(ex['inputs']), len(ex['targets'])) for ex in examples]
  # The documents are joined (2303 bytes) and cut into four full 568-token
  # chunks, which fill 512/114 exactly, and a 31-token tail.
  assert len(lengths) == 5
  assert lengths[:4] == [(512, 114)] * 4
  assert lengths[4][0] < 512 and lengths[4][1] < 114
  assert all(ex['inputs'][-1] == 1 and ex['targets'][-1] == 1
             for ex in examples)
  merged = []
  for ex in examples:
    merged += span_corruption.merge_inputs_and_targets(
        ex['inputs'], ex['targets'], VOCAB)
  assert VOCAB.decode(merged) == ''.join(DOCUMENTS)


def test_mock_c4_packs_into_t5_feature_lengths_with_sentinel_targets():
  examples = task_testing.converted_examples(
      [(c4.span_corruption_task(VOCAB), 'train')], c4.FEATURE_LENGTHS,
      pack=True, num_examples=60)
  task_testing.assert_converted(examples, c4.FEATURE_LENGTHS, pack=True)
  # Sixty short random documents make at least one full-length chunk.
  assert (examples[0]['encoder_segment_ids'] == 1).all()
  for ex in examples:
    segments = ex['decoder_segment_ids']
    for segment in np.unique(segments[segments > 0]):
      targets = ex['decoder_target_tokens'][segments == segment]
      # Every packed target starts with <extra_id_0> and ends with EOS.
      assert targets[0] == FIRST_SENTINEL and targets[-1] == 1
      np.testing.assert_array_equal(
          ex['decoder_positions'][segments == segment],
          np.arange(len(targets)))
      inputs = ex['encoder_input_tokens'][ex['encoder_segment_ids'] ==
                                          segment]
      assert FIRST_SENTINEL in inputs and inputs[-1] == 1


def test_long_document_keeps_one_aligned_65536_token_chunk():

  def as_dataset(builder, split, **unused_kwargs):
    del builder, split
    return tf.data.Dataset.from_tensor_slices(
        {'text': [LONG_DOCUMENT, 'Hi.'], 'url': ['https://example.com'] * 2})

  def merged(seed):
    examples = task_testing.task_examples(
        c4.span_corruption_task(VOCAB), 'train', c4.FEATURE_LENGTHS,
        as_dataset_fn=as_dataset, seed=seed)
    tokens = []
    for ex in examples:
      tokens += span_corruption.merge_inputs_and_targets(
          ex['inputs'], ex['targets'], VOCAB)
    return tuple(tokens)

  tokens, short = VOCAB.encode(LONG_DOCUMENT), VOCAB.encode('Hi.')
  # Seed 0 draws the tail, seed 2 the first chunk.
  assert {merged(0), merged(2)} == {tuple(tokens[65536:] + short),
                                    tuple(tokens[:65536] + short)}
