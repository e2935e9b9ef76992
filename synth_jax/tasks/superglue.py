"""SuperGLUE as text-to-text seqio tasks, in T5's formats (Raffel et al. 2020).

Most benchmarks use GLUE's `<name> <field>: <text> ...` format
(`glue.join_fields`); three need their own:

  multirc  'multirc question: ... answer: ... paragraph: ...' -> 'True';
           HTML (<br>, <b>) stripped; scored per answer (F1a) and per
           question (exact match), so examples keep their idx.
  record   'record query: ... entities: A, B passage: ...' -> one example per
           gold answer; '@highlight' bullets become sentences.
  wsc      'wsc: The city refused the women a permit because *they* feared
           violence.' -> the candidate referent's text ('The city'). Training
           keeps only correct candidates; evaluation asks whether the
           predicted referent is the candidate (T5's "WSC simple" setup).

Tasks are named `synth_jax_super_glue_<benchmark>`, WSC as
`synth_jax_super_glue_wsc_simple_train` / `..._eval`; `synth_jax_super_glue`
mixes the training sets in proportion to their sizes.
"""
import functools
from typing import Dict, Mapping, Optional

import seqio
import tensorflow as tf

from synth_jax.tasks import glue
from synth_jax.tasks import metrics
from synth_jax.tasks import postprocessors
from synth_jax.tasks import registration
from synth_jax.tasks import text_to_text

TFDS_VERSION = '1.0.2'
MIXTURE_NAME = 'synth_jax_super_glue'
WSC_TFDS_CONFIG = 'wsc.fixed'
_FALSE_TRUE = ('False', 'True')
_NLI_FIELDS = ('hypothesis', 'premise')

Benchmark = glue.Benchmark

BENCHMARKS: Mapping[str, Benchmark] = {
    'boolq': Benchmark('boolq', 'boolq', ('passage', 'question'), _FALSE_TRUE,
                       (metrics.accuracy,), 9_427),
    'cb': Benchmark('cb', 'cb', _NLI_FIELDS,
                    ('entailment', 'contradiction', 'neutral'),
                    (metrics.mean_multiclass_f1(3), metrics.accuracy), 250),
    'copa': Benchmark('copa', 'copa',
                      ('choice1', 'choice2', 'premise', 'question'),
                      ('choice1', 'choice2'), (metrics.accuracy,), 400),
    'multirc': Benchmark('multirc', 'multirc',
                         ('question', 'answer', 'paragraph'), _FALSE_TRUE,
                         (metrics.multirc_f1a, metrics.multirc_exact_match),
                         27_243),
    # One training example per gold answer: T5's count of those, not the
    # 100,730 training queries.
    'record': Benchmark('record', 'record', ('query', 'entities', 'passage'),
                        None, (metrics.record_em_f1,), 138_854),
    'rte': Benchmark('rte', 'rte', _NLI_FIELDS,
                     ('entailment', 'not_entailment'), (metrics.accuracy,),
                     2_490),
    'wic': Benchmark('wic', 'wic', ('sentence1', 'sentence2', 'word'),
                     _FALSE_TRUE, (metrics.accuracy,), 5_428),
    # 259 of wsc.fixed's 554 training examples name the correct referent.
    'wsc_simple_train': Benchmark('wsc', WSC_TFDS_CONFIG, ('text',), None, (),
                                  259, {'train': 'train'}),
    'wsc_simple_eval': Benchmark('wsc', WSC_TFDS_CONFIG, ('text',), None,
                                 (metrics.accuracy,), 0,
                                 {'validation': 'validation', 'test': 'test'}),
}


def task_name(benchmark: str) -> str:
  return f'synth_jax_super_glue_{benchmark}'


@seqio.map_over_dataset
def multirc_text_to_text(features):
  """MultiRC answer option -> `{'inputs', 'targets', 'idx/paragraph',
  'idx/question', 'idx/answer'}`; inputs without the paragraph's HTML."""
  inputs = glue.join_fields(features, 'multirc',
                            ('question', 'answer', 'paragraph'))
  inputs = tf.strings.regex_replace(inputs, '<br>', ' ')
  inputs = tf.strings.regex_replace(inputs, '</?b>', '')
  idx = features['idx']
  return {'inputs': inputs,
          'targets': glue.label_text(features['label'], _FALSE_TRUE),
          'idx/paragraph': idx['paragraph'], 'idx/question': idx['question'],
          'idx/answer': idx['answer']}


def record_passage(passage: tf.Tensor) -> tf.Tensor:
  """Turns ReCoRD's '\\n@highlight\\n' bullet separators into sentence breaks.

  A bullet after end punctuation becomes a space, any other a '. '.
  """
  passage = tf.strings.regex_replace(passage, '([.?!"\'])\n@highlight\n',
                                     r'\1 ')
  return tf.strings.regex_replace(passage, '\n@highlight\n', '. ')


def record_text_to_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD query -> one example per gold answer ('<unk>' if it has none).

  Returns:
    Examples `{'inputs', 'targets': one answer, 'answers': [all answers],
    'idx/passage', 'idx/query'}`.
  """

  def one_per_answer(features):
    inputs = tf.strings.join([
        'record query:', features['query'], 'entities:',
        tf.strings.reduce_join(features['entities'], separator=', '),
        'passage:', record_passage(features['passage'])], separator=' ')
    answers = features['answers']
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant(['<unk>']))
    idx = features['idx']
    return tf.data.Dataset.from_tensor_slices(targets).map(
        lambda target: {'inputs': inputs, 'targets': target,
                        'answers': answers, 'idx/passage': idx['passage'],
                        'idx/query': idx['query']})

  return dataset.flat_map(one_per_answer)


def wsc_mark_pronoun(text: tf.Tensor, pronoun: tf.Tensor,
                     pronoun_index: tf.Tensor) -> tf.Tensor:
  """Wraps the pronoun at word `pronoun_index` (space-split) in asterisks.

  A few WSC texts have the index one word off or punctuation glued to the
  pronoun ('him,"'), so the word marked is the one nearest the index that is
  the pronoun followed only by punctuation; trailing punctuation stays
  outside the asterisks. With no such word, the indexed word is replaced by
  the marked pronoun.
  """
  words = tf.strings.split(text, sep=' ')
  num_words = tf.size(words, out_type=tf.int32)
  word_lengths = tf.strings.length(words)
  heads = tf.strings.substr(words, 0, tf.strings.length(pronoun))
  tails = tf.strings.substr(
      words, tf.minimum(tf.strings.length(pronoun), word_lengths), word_lengths)
  is_pronoun = tf.logical_and(
      tf.equal(heads, pronoun), tf.strings.regex_full_match(tails, r'[^\w]*'))
  pronoun_index = tf.cast(pronoun_index, tf.int32)
  distance = tf.abs(tf.range(num_words) - pronoun_index)
  nearest = tf.cast(
      tf.argmin(tf.where(is_pronoun, distance, num_words + 1)), tf.int32)
  found = tf.reduce_any(is_pronoun)
  index = tf.where(found, nearest,
                   tf.clip_by_value(pronoun_index, 0, num_words - 1))
  tail = tf.where(found, tails[index], '')
  marked = tf.strings.join(['*', pronoun, '*', tail])
  words = tf.tensor_scatter_nd_update(words, [[index]], [marked])
  return tf.strings.reduce_join(words, separator=' ')


@seqio.map_over_dataset
def wsc_simple_text_to_text(features):
  """WSC -> `{'inputs': 'wsc: <text, *pronoun* marked>', 'targets':
  candidate referent, 'label', 'idx'}`."""
  marked = wsc_mark_pronoun(features['text'], features['span2_text'],
                            features['span2_index'])
  return {'inputs': tf.strings.join(['wsc:', marked], separator=' '),
          'targets': features['span1_text'],
          'label': features['label'], 'idx': features['idx']}


def _keep_correct_referents(dataset: tf.data.Dataset) -> tf.data.Dataset:
  # Training on wrong candidates would teach the model to name them.
  return dataset.filter(lambda features: features['label'] == 1)


def _text_preprocessors(benchmark: str, spec: Benchmark):
  if benchmark == 'multirc':
    return [multirc_text_to_text]
  if benchmark == 'record':
    return [record_text_to_text]
  if benchmark == 'wsc_simple_train':
    return [_keep_correct_referents, wsc_simple_text_to_text]
  if benchmark == 'wsc_simple_eval':
    return [wsc_simple_text_to_text]
  return [functools.partial(glue.classification_text_to_text,
                            prefix=spec.prefix, fields=tuple(spec.fields),
                            label_classes=tuple(spec.label_classes))]


def _postprocess_fn(benchmark: str, spec: Benchmark):
  if benchmark == 'multirc':
    return postprocessors.multirc
  if benchmark == 'record':
    return postprocessors.record
  if benchmark.startswith('wsc'):
    return postprocessors.wsc_simple
  return functools.partial(postprocessors.string_label_to_class_id,
                           label_classes=tuple(spec.label_classes))


def super_glue_task(benchmark: str,
                    vocabulary: Optional[seqio.Vocabulary] = None,
                    tfds_data_dir: Optional[str] = None) -> seqio.Task:
  """Builds (does not register) the task for one SuperGLUE benchmark.

  Args:
    benchmark: a key of `BENCHMARKS`, e.g. 'boolq' or 'wsc_simple_eval'.
    vocabulary: defaults to `vocabularies.default_vocabulary()`.
    tfds_data_dir: TFDS data directory; None uses TFDS's default.

  Returns:
    A `seqio.Task` named `synth_jax_super_glue_<benchmark>`; examples hold
    `inputs`/`targets` int32 ids ending in EOS plus what evaluation needs
    (`_pretokenized` text, idx, ReCoRD answers, WSC label).
  """
  spec = BENCHMARKS[benchmark]
  return text_to_text.tfds_text_to_text_task(
      task_name(benchmark), f'super_glue/{spec.tfds_config}:{TFDS_VERSION}', spec.splits,
      _text_preprocessors(benchmark, spec), _postprocess_fn(benchmark, spec), spec.metric_fns,
      vocabulary, tfds_data_dir)


def mixture_rates() -> Dict[str, int]:
  """Task name -> rate of `synth_jax_super_glue`: training-set sizes."""
  return {task_name(b): spec.train_examples for b, spec in BENCHMARKS.items()}


def register(vocabulary: Optional[seqio.Vocabulary] = None,
             tfds_data_dir: Optional[str] = None) -> None:
  """Registers every SuperGLUE task and the mixture (idempotent)."""
  for benchmark in BENCHMARKS:
    registration.register_task(
        super_glue_task(benchmark, vocabulary, tfds_data_dir))
  registration.register_mixture(MIXTURE_NAME, list(mixture_rates().items()))


register()
