"""Tests for synth_jax/tasks/glue.py."""
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from synth_jax.tasks import glue
from synth_jax.tasks import vocabularies
from tests.tasks import task_testing

VOCAB = vocabularies.byte_vocabulary()
LENGTHS = {'inputs': 64, 'targets': 16}


def _example(label, **fields):
  return {**fields, 'label': label, 'idx': np.int32(7)}


FORMATS = [
    ('cola', _example(np.int64(1), sentence='The book fell.'),
     'cola sentence: The book fell.', 'acceptable'),
    ('sst2', _example(np.int64(0), sentence='A dull film.'),
     'sst2 sentence: A dull film.', 'negative'),
    ('mrpc', _example(np.int64(1), sentence1='He left.', sentence2='He went.'),
     'mrpc sentence1: He left. sentence2: He went.', 'equivalent'),
    ('qqp', _example(np.int64(0), question1='Why?', question2='How?'),
     'qqp question1: Why? question2: How?', 'not_duplicate'),
    ('stsb', _example(np.float32(3.77), sentence1='A man.',
                      sentence2='A person.'),
     'stsb sentence1: A man. sentence2: A person.', '3.8'),
    ('stsb', _example(np.float32(5.0), sentence1='a', sentence2='b'),
     'stsb sentence1: a sentence2: b', '5.0'),
    ('stsb', _example(np.float32(0.09), sentence1='a', sentence2='b'),
     'stsb sentence1: a sentence2: b', '0.0'),
    ('mnli', _example(np.int64(1), premise='It rains.',
                      hypothesis='It is wet.'),
     'mnli hypothesis: It is wet. premise: It rains.', 'neutral'),
    ('mnli_matched', _example(np.int64(2), premise='P.', hypothesis='H.'),
     'mnli hypothesis: H. premise: P.', 'contradiction'),
    ('mnli_mismatched', _example(np.int64(-1), premise='P.', hypothesis='H.'),
     'mnli hypothesis: H. premise: P.', '<unk>'),
    ('qnli', _example(np.int64(1), question='Who?', sentence='Nobody.'),
     'qnli question: Who? sentence: Nobody.', 'not_entailment'),
    ('rte', _example(np.int64(0), sentence1='A cat sat.', sentence2='A cat.'),
     'rte sentence1: A cat sat. sentence2: A cat.', 'entailment'),
    ('wnli', _example(np.int64(1), sentence1='S1.', sentence2='S2.'),
     'wnli sentence1: S1. sentence2: S2.', 'entailment'),
    # The diagnostic set is cast as MNLI (T5's glue_ax_v002).
    ('ax', _example(np.int64(0), premise='P.', hypothesis='H.'),
     'mnli hypothesis: H. premise: P.', 'entailment'),
]


@pytest.mark.parametrize('benchmark,example,inputs,targets', FORMATS)
def test_examples_take_t5_text_format(benchmark, example, inputs, targets):
  (formatted,) = task_testing.format_examples(
      glue.glue_task(benchmark, VOCAB), [example])
  assert formatted == {'inputs': inputs, 'targets': targets, 'idx': 7}


@pytest.mark.parametrize('benchmark', sorted(glue.BENCHMARKS))
def test_label_classes_and_fields_match_tfds(benchmark):
  spec = glue.BENCHMARKS[benchmark]
  config = tfds.builder_cls('glue').builder_configs[spec.tfds_config]
  assert set(spec.fields) == set(config.text_features)
  if spec.label_classes is None:
    assert config.label_classes is None
  else:
    assert tuple(spec.label_classes) == tuple(config.label_classes)


def test_every_task_yields_converted_examples_from_mock_tfds():
  splits = {'mnli': 'validation_mismatched', 'ax': 'test'}  # ax: test only
  tasks = [(glue.glue_task(b, VOCAB), splits.get(b, 'validation')) for b in glue.BENCHMARKS]
  examples = task_testing.converted_examples(tasks, LENGTHS, num_examples=3)
  task_testing.assert_converted(examples, LENGTHS)
  assert len(examples) == 3 * len(tasks)
  for i, ex in enumerate(examples):
    spec = glue.BENCHMARKS[list(glue.BENCHMARKS)[i // 3]]
    inputs = VOCAB.decode(ex['encoder_input_tokens'])
    assert inputs.startswith(f'{spec.prefix} {spec.fields[0]}: '), inputs
    target = VOCAB.decode(ex['decoder_target_tokens'])
    if spec.label_classes is None:
      assert re.fullmatch(r'-?\d+\.\d', target), target
    else:
      assert target in spec.label_classes, (spec.prefix, target)
    # Loss on every target token (EOS included), none on padding.
    num_target_tokens = int(np.sum(ex['decoder_target_tokens'] != 0))
    assert ex['decoder_loss_weights'].sum() == num_target_tokens
    assert ex['decoder_target_tokens'][num_target_tokens - 1] == 1


def test_registered_tasks_read_glue_2_0_0_with_t5_vocabulary():
  task = seqio.get_mixture_or_task('synth_jax_glue_cola')
  assert task.source.tfds_dataset.name == 'glue/cola:2.0.0'
  vocab = task.output_features['targets'].vocabulary
  assert vocab.sentencepiece_model_file == (
      vocabularies.DEFAULT_SENTENCEPIECE_MODEL)
  assert vocab.extra_ids == 100


@pytest.mark.parametrize('benchmark,tfds_split', [
    ('mnli_matched', 'validation_matched'),
    ('mnli_mismatched', 'validation_mismatched')])
def test_mnli_evaluation_tasks_read_their_tfds_validation_split(
    benchmark, tfds_split):
  requested = []

  def as_dataset(builder, split, **unused_kwargs):
    requested.append((builder.name, builder.builder_config.name, str(split)))
    return tf.data.Dataset.from_tensors(
        _example(np.int64(0), premise='P.', hypothesis='H.'))

  task = glue.glue_task(benchmark, VOCAB)
  examples = task_testing.task_examples(task, 'validation', LENGTHS,
                                        as_dataset_fn=as_dataset)
  assert requested == [('glue', 'mnli', tfds_split)]
  assert examples[0]['inputs_pretokenized'] == (
      b'mnli hypothesis: H. premise: P.')
  assert 'train' not in task.splits


# T5's glue_v002_proportional (t5.data.glue_utils.GLUE_WEIGHT_MAPPING), counted on TFDS
# glue 1.0.0; WNLI is left out (T5 trains on WSC/DPR instead).
T5_GLUE_RATES = {'cola': 8_551, 'sst2': 67_349, 'mrpc': 3_668, 'qqp': 363_849, 'stsb': 5_749,
                 'mnli': 392_702, 'qnli': 104_743, 'rte': 2_490, 'mnli_mismatched': 0,
                 'mnli_matched': 0, 'ax': 0}


def test_mixture_rates_equal_t5s_for_the_same_tfds_version():
  assert glue.mixture_rates('1.0.0') == {glue.task_name(b): r for b, r in T5_GLUE_RATES.items()}
  # glue 2.0.0 (the default) changed QQP's source: 3 fewer training examples.
  assert glue.mixture_rates('2.0.0') == {
      **glue.mixture_rates('1.0.0'), glue.task_name('qqp'): 363_846}
  mixture = seqio.get_mixture_or_task('synth_jax_glue')
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == glue.mixture_rates(glue.TFDS_VERSION) and glue.TFDS_VERSION == '2.0.0'


@pytest.mark.parametrize('benchmark,prediction,expected', [
    ('cola', 'acceptable', 1), ('cola', 'grammatical', -1),
    ('mnli', 'contradiction', 2), ('stsb', '2.6', 2.6), ('stsb', 'x', -1.0)])
def test_registered_postprocessors_map_text_to_label_ids(
    benchmark, prediction, expected):
  task = seqio.get_mixture_or_task(glue.task_name(benchmark))
  assert task.postprocess_fn(prediction, example={}, is_target=False) == (
      expected)


def test_registered_metrics_are_the_official_ones():
  names = {b: [fn.__name__ for fn in
               seqio.get_mixture_or_task(glue.task_name(b)).metric_fns]
           for b in ('cola', 'mrpc', 'stsb', 'qqp', 'mnli_matched')}
  assert names == {
      'cola': ['matthews_corrcoef'],
      'mrpc': ['f1_with_invalid', 'accuracy'],
      'stsb': ['pearson_corrcoef', 'spearman_corrcoef'],
      'qqp': ['f1_with_invalid', 'accuracy'],
      'mnli_matched': ['accuracy'],
  }
