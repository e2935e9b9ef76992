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
  dpr      Definite Pronoun Resolution in the same format, trained with WSC.
  axb/axg  the diagnostics, cast as RTE; test split only.

Tasks are named `synth_jax_super_glue_<benchmark>`, WSC as
`synth_jax_super_glue_wsc_simple_train` / `..._eval`, DPR as
`synth_jax_super_glue_dpr_simple`; `synth_jax_super_glue` mixes the training
sets with T5's rates (its `super_glue_v102_proportional`; TFDS super_glue
1.0.2, definite_pronoun_resolution 1.1.0).
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
DPR_TFDS_NAME = 'definite_pronoun_resolution:1.1.0'
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
                         (metrics.multirc_f1, metrics.multirc_exact_match),
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
    # Definite Pronoun Resolution in WSC's format: T5 trains on it with WSC
    # (`dpr_v001_simple`, 1,322 training examples); a tfds_config with ':' is a
    # full TFDS name.
    'dpr_simple': Benchmark('wsc', DPR_TFDS_NAME, ('sentence',), None,
                            (metrics.accuracy,), 1_322,
                            {'train': 'train', 'test': 'test'}),
    # The diagnostics, cast as RTE and scored on an RTE-trained model; test
    # split only (unlabeled), so no metrics here.
    'axb': Benchmark('rte', 'axb', _NLI_FIELDS, ('entailment', 'not_entailment'),
                     (), 0, {'test': 'test'}),
    'axg': Benchmark('rte', 'axg', _NLI_FIELDS, ('entailment', 'not_entailment'),
                     (), 0, {'test': 'test'}),
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


# Two wsc.fixed texts T5 formats by hand: in the first the pronoun carries punctuation ('him,"'),
# in the second span2_index points at 'use', not 'it'. Both keep T5's spacing exactly.
WSC_SPECIAL_CASES = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John laughed '
    'out quite loud. "Good for him," he said. ':
        'The boy continued to whip the pony , and eventually the pony threw him over. John '
        'laughed out quite loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic '
    'pebble in an iron safe . Some day they might want to use it , but really for now, what '
    'more could they wish for?':
        'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the '
        'magic pebble in an iron safe . Some day they might want to use X , but really for now, '
        'what more could they wish for?',
}


def wsc_blank_pronoun(text: tf.Tensor, pronoun: tf.Tensor,
                      pronoun_index: tf.Tensor) -> tf.Tensor:
  """The text with word `pronoun_index` (space-split) replaced by 'X', as T5 does.

  The words before and after are joined to 'X' by single spaces, so a pronoun
  that ends the text leaves a trailing space ('... saw X '). An index that is
  0, past the end or not at `pronoun` fails the input pipeline (T5 fails
  there too) rather than marking another word; the texts in
  `WSC_SPECIAL_CASES` are formatted as listed.
  """
  def blank():
    words = tf.strings.split(text, sep=' ')
    index = tf.cast(pronoun_index, tf.int32)
    checks = [
        tf.debugging.assert_greater(index, 0, message='WSC span2_index must be > 0'),
        tf.debugging.assert_less(index, tf.size(words),
                                 message='WSC span2_index is past the end of the text'),
    ]
    with tf.control_dependencies(checks):
      word = tf.gather(words, index)
    with tf.control_dependencies([tf.debugging.assert_equal(
        word, pronoun, message='WSC span2_index does not point at span2_text')]):
      return tf.strings.join([tf.strings.reduce_join(words[:index], separator=' '), 'X',
                              tf.strings.reduce_join(words[index + 1:], separator=' ')],
                             separator=' ')

  result = blank
  for special, formatted in WSC_SPECIAL_CASES.items():
    result = functools.partial(tf.cond, tf.equal(text, special),
                               functools.partial(tf.constant, formatted), result)
  return result()


@seqio.map_over_dataset
def wsc_simple_text_to_text(features):
  """WSC -> `{'inputs': 'wsc: <text, *pronoun* marked>', 'targets':
  candidate referent, 'label', 'idx'}`; every ' X ' of the blanked text
  becomes ' *pronoun* ' (T5's regex replacement)."""
  blanked = wsc_blank_pronoun(features['text'], features['span2_text'],
                              features['span2_index'])
  marked = tf.strings.regex_replace(
      blanked, ' X ', tf.strings.join([' *', features['span2_text'], '* ']))
  return {'inputs': tf.strings.join(['wsc:', marked], separator=' '),
          'targets': features['span1_text'],
          'label': features.get('label', 0), 'idx': features['idx']}


def _keep_correct_referents(dataset: tf.data.Dataset) -> tf.data.Dataset:
  # Training on wrong candidates would teach the model to name them. As T5: any
  # nonzero label is kept.
  return dataset.filter(lambda features: tf.cast(features['label'], tf.bool))


@seqio.map_over_dataset
def dpr_simple_text_to_text(features):
  """Definite Pronoun Resolution -> `{'inputs': 'wsc: <sentence, *pronoun*
  marked>', 'targets': the correct candidate}` (T5's `dpr_v001_simple`).

  The first occurrence of the pronoun preceded by a space and followed by a
  space, '.' or ',' is marked (the pronoun is used as a regex, as T5 does).
  """
  pattern = tf.strings.join([' (', features['pronoun'], ')( |\\.|,)'])
  marked = tf.strings.regex_replace(features['sentence'], pattern, r' *\1*\2',
                                    replace_global=False)
  return {'inputs': tf.strings.join(['wsc:', marked], separator=' '),
          'targets': tf.gather(features['candidates'], features['label'])}


@seqio.map_over_dataset
def rekey_axb(features):
  """AX-b names its sentences like RTE's GLUE version; T5 renames them to
  SuperGLUE RTE's premise (sentence1) and hypothesis (sentence2)."""
  return {'premise': features['sentence1'], 'hypothesis': features['sentence2'],
          'label': features['label'], 'idx': features['idx']}


def _text_preprocessors(benchmark: str, spec: Benchmark):
  glue_format = functools.partial(glue.classification_text_to_text, prefix=spec.prefix,
                                  fields=tuple(spec.fields),
                                  label_classes=tuple(spec.label_classes or ()))
  if benchmark == 'axb':
    return [rekey_axb, glue_format]
  if benchmark == 'dpr_simple':
    return [dpr_simple_text_to_text]
  if benchmark == 'multirc':
    return [multirc_text_to_text]
  if benchmark == 'record':
    return [record_text_to_text]
  if benchmark == 'wsc_simple_train':
    return [_keep_correct_referents, wsc_simple_text_to_text]
  if benchmark == 'wsc_simple_eval':
    return [wsc_simple_text_to_text]
  return [glue_format]


def _postprocess_fn(benchmark: str, spec: Benchmark):
  if benchmark == 'dpr_simple':
    return None  # the predicted referent's text is compared as it is
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
  tfds_name = (spec.tfds_config if ':' in spec.tfds_config else
               f'super_glue/{spec.tfds_config}:{TFDS_VERSION}')
  return text_to_text.tfds_text_to_text_task(
      task_name(benchmark), tfds_name, spec.splits,
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
