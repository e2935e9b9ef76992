"""Tests for synth_jax/tasks/superglue.py."""
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from synth_jax.tasks import superglue
from synth_jax.tasks import vocabularies
from tests.tasks import task_testing

VOCAB = vocabularies.byte_vocabulary()
LENGTHS = {'inputs': 96, 'targets': 24}
IDX = np.int32(7)


def _format(benchmark, *examples):
  return task_testing.format_examples(
      superglue.super_glue_task(benchmark, VOCAB), list(examples))


@pytest.mark.parametrize('benchmark,example,inputs,targets', [
    ('boolq', {'question': 'is it wet', 'passage': 'It rains.',
               'label': np.int64(1), 'idx': IDX},
     'boolq passage: It rains. question: is it wet', 'True'),
    ('cb', {'premise': 'It rains.', 'hypothesis': 'It is dry.',
            'label': np.int64(1), 'idx': IDX},
     'cb hypothesis: It is dry. premise: It rains.', 'contradiction'),
    ('copa', {'premise': 'The man broke his toe.', 'question': 'cause',
              'choice1': 'He dropped a hammer.', 'choice2': 'He sat down.',
              'label': np.int64(0), 'idx': IDX},
     'copa choice1: He dropped a hammer. choice2: He sat down. premise: The '
     'man broke his toe. question: cause', 'choice1'),
    ('rte', {'premise': 'P.', 'hypothesis': 'H.', 'label': np.int64(1),
             'idx': IDX},
     'rte hypothesis: H. premise: P.', 'not_entailment'),
    ('wic', {'word': 'bank', 'sentence1': 'A river bank.',
             'sentence2': 'A bank loan.', 'start1': np.int32(8),
             'start2': np.int32(2), 'end1': np.int32(12), 'end2': np.int32(6),
             'label': np.int64(0), 'idx': IDX},
     'wic sentence1: A river bank. sentence2: A bank loan. word: bank',
     'False'),
    ('cb', {'premise': 'P.', 'hypothesis': 'H.', 'label': np.int64(-1),
            'idx': IDX},
     'cb hypothesis: H. premise: P.', '<unk>'),
])
def test_glue_style_examples_take_t5_text_format(benchmark, example, inputs,
                                                 targets):
  assert _format(benchmark, example) == [
      {'inputs': inputs, 'targets': targets, 'idx': 7}]


def test_multirc_strips_html_and_keeps_question_ids():
  example = {'paragraph': 'Sent one.<br>Sent <b>two</b>.', 'question': 'Q?',
             'answer': 'A.', 'label': np.int64(1),
             'idx': {'paragraph': np.int32(1), 'question': np.int32(2),
                     'answer': np.int32(3)}}
  assert _format('multirc', example) == [{
      'inputs': 'multirc question: Q? answer: A. paragraph: Sent one. Sent '
                'two.',
      'targets': 'True', 'idx/paragraph': 1, 'idx/question': 2,
      'idx/answer': 3}]


def _record(answers):
  return {'passage': 'The tower opened.\n@highlight\nIt is tall\n@highlight\n'
                     'Paris loves it',
          'query': 'The @placeholder is in Paris.',
          'entities': np.array(['tower', 'Paris']),
          'answers': np.array(answers, dtype=object).astype(str),
          'idx': {'passage': np.int32(4), 'query': np.int32(5)}}


def test_record_gives_one_example_per_answer_with_highlights_as_sentences():
  inputs = ('record query: The @placeholder is in Paris. entities: tower, '
            'Paris passage: The tower opened. It is tall. Paris loves it')
  common = {'inputs': inputs, 'answers': ['tower', 'Tower'],
            'idx/passage': 4, 'idx/query': 5}
  assert _format('record', _record(['tower', 'Tower'])) == [
      {**common, 'targets': 'tower'}, {**common, 'targets': 'Tower'}]


def test_record_without_answers_gives_one_unk_example():
  (example,) = _format('record', _record(np.array([], dtype=str)))
  assert example['targets'] == '<unk>'
  assert example['answers'] == []


def _wsc(text, pronoun, index, label=1):
  return {'text': text, 'span1_text': 'The city councilmen',
          'span1_index': np.int32(0), 'span2_text': pronoun,
          'span2_index': np.int32(index), 'label': np.int64(label),
          'idx': IDX}


@pytest.mark.parametrize('text,pronoun,index,inputs', [
    ('The city councilmen refused the demonstrators a permit because they '
     'feared violence.', 'they', 9,
     'wsc: The city councilmen refused the demonstrators a permit because '
     '*they* feared violence.'),
    # A pronoun that ends the text keeps T5's trailing space.
    ('The trophy did not fit because of it', 'it', 7,
     'wsc: The trophy did not fit because of *it* '),
    # 'its' is not 'it': only the indexed word is marked.
    ('The cat licked its paw because it was dirty', 'it', 6,
     'wsc: The cat licked its paw because *it* was dirty'),
    # Every ' X ' word is replaced, as T5's global regex does.
    ('Player X beat him at chess', 'him', 3,
     'wsc: Player *him* beat *him* at chess'),
])
def test_wsc_marks_the_pronoun_and_targets_the_candidate(text, pronoun, index,
                                                        inputs):
  (example,) = _format('wsc_simple_eval', _wsc(text, pronoun, index))
  assert example == {'inputs': inputs, 'targets': 'The city councilmen',
                     'label': 1, 'idx': 7}


@pytest.mark.parametrize('text,pronoun,index,inputs', [
    # span2_index points at 'him,"' (punctuation glued on).
    ('The boy continued to whip the pony , and eventually the pony threw him '
     'over. John laughed out quite loud. "Good for him," he said. ', 'him',
     22,
     'wsc: The boy continued to whip the pony , and eventually the pony threw '
     'him over. John laughed out quite loud. "Good for *him* ," he said.'),
    # span2_index points at 'use', not 'it'.
    ('When they had eventually calmed down a bit , and had gotten home, Mr. '
     'Farley put the magic pebble in an iron safe . Some day they might want '
     'to use it , but really for now, what more could they wish for?', 'it',
     27,
     'wsc: When they had eventually calmed down a bit , and had gotten home, '
     'Mr. Farley put the magic pebble in an iron safe . Some day they might '
     'want to use *it* , but really for now, what more could they wish for?'),
])
def test_wsc_formats_t5s_two_special_cases_as_t5(text, pronoun, index, inputs):
  (example,) = _format('wsc_simple_eval', _wsc(text, pronoun, index))
  assert example['inputs'] == inputs


@pytest.mark.parametrize('index,message', [
    (3, 'does not point at span2_text'),  # 'it' is word 4
    (0, 'must be > 0'),
    (9, 'past the end'),
])
def test_wsc_with_a_wrong_pronoun_index_fails_loudly(index, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _format('wsc_simple_eval', _wsc('I saw the dog and it barked', 'it', index))


def test_wsc_training_keeps_examples_with_a_nonzero_label():
  right = _wsc('a b they', 'they', 2, label=1)
  wrong = _wsc('c d they', 'they', 2, label=0)
  unlabeled = _wsc('e f they', 'they', 2, label=-1)  # T5's cast to bool keeps it
  train = _format('wsc_simple_train', right, wrong, unlabeled)
  evaluation = _format('wsc_simple_eval', right, wrong)
  assert [ex['inputs'] for ex in train] == ['wsc: a b *they* ', 'wsc: e f *they* ']
  assert [ex['label'] for ex in evaluation] == [1, 0]


def test_dpr_marks_the_first_pronoun_followed_by_a_space_or_punctuation():
  example = {'sentence': 'Bob asked Tom if he can lend some money, and he did.',
             'pronoun': 'he', 'candidates': np.array(['Bob', 'Tom'], dtype=object),
             'label': np.int64(1)}
  assert _format('dpr_simple', example) == [{
      'inputs': 'wsc: Bob asked Tom if *he* can lend some money, and he did.',
      'targets': 'Tom'}]
  # 'he.' at the end is marked; 'her' is not 'he'.
  example = {**example, 'sentence': 'Ann thanked her sister because of he.'}
  assert _format('dpr_simple', example)[0]['inputs'] == (
      'wsc: Ann thanked her sister because of *he*.')


def test_diagnostics_are_cast_as_rte_with_t5s_field_order():
  axb = {'sentence1': 'S one.', 'sentence2': 'S two.', 'label': np.int64(0),
         'idx': IDX}
  axg = {'premise': 'P.', 'hypothesis': 'H.', 'label': np.int64(1), 'idx': IDX}
  assert _format('axb', axb) == [{'inputs': 'rte hypothesis: S two. premise: S one.',
                                  'targets': 'entailment', 'idx': 7}]
  assert _format('axg', axg) == [{'inputs': 'rte hypothesis: H. premise: P.',
                                  'targets': 'not_entailment', 'idx': 7}]


@pytest.mark.parametrize('benchmark', sorted(set(superglue.BENCHMARKS) - {'dpr_simple', 'axb'}))
def test_label_classes_match_tfds(benchmark):
  spec = superglue.BENCHMARKS[benchmark]
  config = tfds.builder_cls('super_glue').builder_configs[spec.tfds_config]
  assert set(spec.fields) <= set(config.features)
  if spec.label_classes is not None:
    assert tuple(spec.label_classes) == tuple(config.label_classes)


def test_every_task_yields_converted_examples_from_mock_tfds():
  splits = {'wsc_simple_train': 'train', 'dpr_simple': 'train', 'axb': 'test', 'axg': 'test'}
  tasks = [(superglue.super_glue_task(b, VOCAB), splits.get(b, 'validation'))
           for b in superglue.BENCHMARKS if not b.startswith('wsc')]
  examples = task_testing.converted_examples(tasks, LENGTHS, num_examples=3)
  task_testing.assert_converted(examples, LENGTHS)
  labels = {spec.prefix: spec.label_classes
            for spec in superglue.BENCHMARKS.values()}
  seen = set()
  for ex in examples:
    inputs = VOCAB.decode(ex['encoder_input_tokens'])
    prefix = inputs.split(' ')[0].rstrip(':')
    seen.add(prefix)
    target = VOCAB.decode(ex['decoder_target_tokens'])
    assert target
    if labels[prefix] is not None:
      assert target in labels[prefix], (prefix, target)
  assert seen == set(labels)


def test_mixture_is_proportional_to_training_set_sizes():
  mixture = seqio.get_mixture_or_task('synth_jax_super_glue')
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  # T5's super_glue_v102_proportional (t5.data.glue_utils), name for name.
  assert rates == {
      'synth_jax_super_glue_boolq': 9_427,
      'synth_jax_super_glue_cb': 250,
      'synth_jax_super_glue_copa': 400,
      'synth_jax_super_glue_multirc': 27_243,
      'synth_jax_super_glue_record': 138_854,
      'synth_jax_super_glue_rte': 2_490,
      'synth_jax_super_glue_wic': 5_428,
      'synth_jax_super_glue_wsc_simple_train': 259,
      'synth_jax_super_glue_wsc_simple_eval': 0,
      'synth_jax_super_glue_dpr_simple': 1_322,
      'synth_jax_super_glue_axb': 0,
      'synth_jax_super_glue_axg': 0,
  }


def test_registered_tasks_read_super_glue_1_0_2_and_wsc_fixed():
  boolq = seqio.get_mixture_or_task('synth_jax_super_glue_boolq')
  wsc = seqio.get_mixture_or_task('synth_jax_super_glue_wsc_simple_eval')
  dpr = seqio.get_mixture_or_task('synth_jax_super_glue_dpr_simple')
  assert boolq.source.tfds_dataset.name == 'super_glue/boolq:1.0.2'
  assert wsc.source.tfds_dataset.name == 'super_glue/wsc.fixed:1.0.2'
  assert dpr.source.tfds_dataset.name == 'definite_pronoun_resolution:1.1.0'


@pytest.mark.parametrize('benchmark,expected', [
    # Only one of CB's three classes occurs: its F1 is 100, the others' 0.
    ('cb', {'mean_3class_f1': 100 / 3, 'accuracy': 100.0}),
    ('multirc', {'f1': 100.0, 'exact_match': 100.0}),  # T5's metric names
    ('record', {'em': 100.0, 'f1': 100.0}),
    ('wsc_simple_eval', {'accuracy': 100.0}),
])
def test_registered_metrics_score_postprocessed_predictions(
    benchmark, expected):
  """Runs each task's postprocessor and metrics on a tiny perfect eval."""
  task = seqio.get_mixture_or_task(superglue.task_name(benchmark))
  example = {'idx/paragraph': 0, 'idx/question': 0, 'idx/passage': 0,
             'idx/query': 0, 'answers': [b'Paris'], 'label': 1,
             'targets_pretokenized': b'The city'}
  target_text = {'cb': 'neutral', 'multirc': 'True', 'record': 'Paris',
                 'wsc_simple_eval': 'the city'}[benchmark]
  targets = [task.postprocess_fn(target_text, example=example,
                                 is_target=True)]
  predictions = [task.postprocess_fn(target_text, example=example,
                                     is_target=False)]
  scores = {}
  for metric_fn in task.metric_fns:
    scores.update(metric_fn(targets * 2, predictions * 2))
  assert scores == pytest.approx(expected)
