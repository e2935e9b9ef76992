"""GLUE as text-to-text seqio tasks, in T5's formats (Raffel et al. 2020, D.1).

Inputs are the benchmark name followed by `field: text` pairs; targets are
the label's name:

  cola   'cola sentence: The book fell.'                  -> 'acceptable'
  stsb   'stsb sentence1: A man. sentence2: A person.'    -> '3.8'
  mnli   'mnli hypothesis: ... premise: ...'              -> 'neutral'

Tasks are named `synth_jax_glue_<benchmark>`; `synth_jax_glue` mixes the
training sets in proportion to their sizes, as T5's `glue_v002_proportional`
(TFDS glue 2.0.0 by default; T5 read 1.0.0, whose QQP has 3 more training
examples: `mixture_rates(tfds_version)` follows the version). `ax`, the
diagnostic set, is formatted as MNLI (test split only). MNLI trains as
`synth_jax_glue_mnli` and is evaluated by `synth_jax_glue_mnli_matched` and
`synth_jax_glue_mnli_mismatched`, whose 'validation' splits are TFDS's
`validation_matched` / `validation_mismatched`.
"""
import functools
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence

import seqio
import tensorflow as tf

from synth_jax.tasks import metrics
from synth_jax.tasks import postprocessors
from synth_jax.tasks import registration
from synth_jax.tasks import text_to_text

TFDS_VERSION = '2.0.0'
MIXTURE_NAME = 'synth_jax_glue'
_STANDARD_SPLITS = {'train': 'train', 'validation': 'validation',
                    'test': 'test'}


class Benchmark(NamedTuple):
  """How one GLUE/SuperGLUE dataset becomes a task.

  Attributes:
    prefix: first word of the inputs, e.g. 'cola'.
    tfds_config: TFDS builder config, e.g. 'mnli'.
    fields: input features in the order they are written.
    label_classes: target text per class id; None for a regression target.
    metric_fns: seqio metric functions.
    train_examples: mixing rate, the official training-set size; 0 keeps
      the task out of training mixtures (evaluation-only tasks).
    splits: seqio split -> TFDS split.
  """
  prefix: str
  tfds_config: str
  fields: Sequence[str]
  label_classes: Optional[Sequence[str]]
  metric_fns: Sequence[Callable[..., Dict[str, float]]]
  train_examples: int
  splits: Mapping[str, str] = _STANDARD_SPLITS


_MNLI_LABELS = ('entailment', 'neutral', 'contradiction')
_NLI_FIELDS = ('hypothesis', 'premise')

BENCHMARKS: Mapping[str, Benchmark] = {
    'cola': Benchmark('cola', 'cola', ('sentence',),
                      ('unacceptable', 'acceptable'),
                      (metrics.matthews_corrcoef,), 8_551),
    'sst2': Benchmark('sst2', 'sst2', ('sentence',), ('negative', 'positive'),
                      (metrics.accuracy,), 67_349),
    'mrpc': Benchmark('mrpc', 'mrpc', ('sentence1', 'sentence2'),
                      ('not_equivalent', 'equivalent'),
                      (metrics.f1_with_invalid, metrics.accuracy), 3_668),
    'qqp': Benchmark('qqp', 'qqp', ('question1', 'question2'),
                     ('not_duplicate', 'duplicate'),
                     (metrics.f1_with_invalid, metrics.accuracy), 363_846),
    'stsb': Benchmark('stsb', 'stsb', ('sentence1', 'sentence2'), None,
                      (metrics.pearson_corrcoef, metrics.spearman_corrcoef),
                      5_749),
    'mnli': Benchmark('mnli', 'mnli', _NLI_FIELDS, _MNLI_LABELS,
                      (metrics.accuracy,), 392_702,
                      {'train': 'train',
                       'validation_matched': 'validation_matched',
                       'validation_mismatched': 'validation_mismatched',
                       'test_matched': 'test_matched',
                       'test_mismatched': 'test_mismatched'}),
    'mnli_matched': Benchmark('mnli', 'mnli', _NLI_FIELDS, _MNLI_LABELS,
                              (metrics.accuracy,), 0,
                              {'validation': 'validation_matched',
                               'test': 'test_matched'}),
    'mnli_mismatched': Benchmark('mnli', 'mnli', _NLI_FIELDS, _MNLI_LABELS,
                                 (metrics.accuracy,), 0,
                                 {'validation': 'validation_mismatched',
                                  'test': 'test_mismatched'}),
    'qnli': Benchmark('qnli', 'qnli', ('question', 'sentence'),
                      ('entailment', 'not_entailment'), (metrics.accuracy,),
                      104_743),
    'rte': Benchmark('rte', 'rte', ('sentence1', 'sentence2'),
                     ('entailment', 'not_entailment'), (metrics.accuracy,),
                     2_490),
    'wnli': Benchmark('wnli', 'wnli', ('sentence1', 'sentence2'),
                      ('not_entailment', 'entailment'), (metrics.accuracy,),
                      635),
    # The diagnostic set, cast as MNLI and predicted by the MNLI-trained
    # model; test split only (unlabeled, scored by the GLUE server).
    'ax': Benchmark('mnli', 'ax', _NLI_FIELDS, _MNLI_LABELS, (), 0,
                    {'test': 'test'}),
}

# Training examples that differ between TFDS glue versions: 2.0.0 changed QQP's
# data source. T5 counted glue 1.0.0 (363,849 QQP examples).
_TRAIN_EXAMPLES_BY_VERSION = {'1.0.0': {'qqp': 363_849}, '1.0.1': {'qqp': 363_849}}

# T5 leaves WNLI out of training: its dev set is adversarial to its train set
# (Raffel et al. 2020, sec. 2.3); the task stays registered for evaluation.
_NOT_MIXED = ('wnli',)


def task_name(benchmark: str) -> str:
  return f'synth_jax_glue_{benchmark}'


def join_fields(features: Mapping[str, tf.Tensor], prefix: str,
                fields: Sequence[str]) -> tf.Tensor:
  """'<prefix> <field1>: <text1> <field2>: <text2> ...' as a string scalar."""
  parts = [prefix]
  for field in fields:
    parts += [f'{field}:', features[field]]
  return tf.strings.join(parts, separator=' ')


def label_text(label: tf.Tensor, label_classes: Sequence[str]) -> tf.Tensor:
  """Class id -> its name; -1 (unlabeled test examples) -> '<unk>'."""
  names = tf.constant(list(label_classes))
  return tf.where(label < 0, tf.constant('<unk>'),
                  tf.gather(names, tf.maximum(label, 0)))


@seqio.map_over_dataset
def classification_text_to_text(features, prefix, fields, label_classes):
  """GLUE-style example -> `{'inputs', 'targets', 'idx'}` strings (idx int)."""
  return {'inputs': join_fields(features, prefix, fields),
          'targets': label_text(features['label'], label_classes),
          'idx': features['idx']}


@seqio.map_over_dataset
def stsb_text_to_text(features):
  """STS-B: the 0-5 similarity, rounded to 0.2, as text ('3.8').

  Nearly all STS-B scores already lie on that grid, so this casts regression
  as 26-way classification with a string per class.
  """
  score = tf.round(features['label'] * 5) / 5
  return {'inputs': join_fields(features, 'stsb', ('sentence1', 'sentence2')),
          'targets': tf.strings.as_string(score, precision=1),
          'idx': features['idx']}


def _text_preprocessor(spec: Benchmark):
  if spec.label_classes is None:
    return stsb_text_to_text
  return functools.partial(classification_text_to_text, prefix=spec.prefix,
                           fields=tuple(spec.fields),
                           label_classes=tuple(spec.label_classes))


def _postprocess_fn(spec: Benchmark):
  if spec.label_classes is None:
    return postprocessors.string_to_float
  return functools.partial(postprocessors.string_label_to_class_id,
                           label_classes=tuple(spec.label_classes))


def glue_task(benchmark: str,
              vocabulary: Optional[seqio.Vocabulary] = None,
              tfds_data_dir: Optional[str] = None,
              tfds_version: str = TFDS_VERSION) -> seqio.Task:
  """Builds (does not register) the task for one GLUE benchmark.

  Args:
    benchmark: a key of `BENCHMARKS`, e.g. 'cola' or 'mnli_mismatched'.
    vocabulary: defaults to `vocabularies.default_vocabulary()`.
    tfds_data_dir: TFDS data directory; None uses TFDS's default.
    tfds_version: TFDS glue version ('2.0.0'; T5 read '1.0.0', which
      differs in QQP only).

  Returns:
    A `seqio.Task` named `synth_jax_glue_<benchmark>` whose examples hold
    `inputs`/`targets` int32 ids ending in EOS, their `_pretokenized` text and
    `idx`.
  """
  spec = BENCHMARKS[benchmark]
  return text_to_text.tfds_text_to_text_task(
      task_name(benchmark), f'glue/{spec.tfds_config}:{tfds_version}', spec.splits,
      [_text_preprocessor(spec)], _postprocess_fn(spec), spec.metric_fns, vocabulary,
      tfds_data_dir)


def mixture_rates(tfds_version: str = TFDS_VERSION) -> Dict[str, int]:
  """Task name -> rate of `synth_jax_glue`: the training-set sizes of TFDS
  glue `tfds_version`, 0 for evaluation-only tasks; T5's
  `glue_v002_proportional` rates for the same version."""
  sizes = _TRAIN_EXAMPLES_BY_VERSION.get(tfds_version, {})
  return {task_name(b): sizes.get(b, spec.train_examples)
          for b, spec in BENCHMARKS.items() if b not in _NOT_MIXED}


def register(vocabulary: Optional[seqio.Vocabulary] = None,
             tfds_data_dir: Optional[str] = None,
             tfds_version: str = TFDS_VERSION) -> None:
  """Registers every GLUE task and the `synth_jax_glue` mixture (idempotent)."""
  for benchmark in BENCHMARKS:
    registration.register_task(
        glue_task(benchmark, vocabulary, tfds_data_dir, tfds_version))
  registration.register_mixture(MIXTURE_NAME, list(mixture_rates(tfds_version).items()))


register()
