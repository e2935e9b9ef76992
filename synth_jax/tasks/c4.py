"""C4 span-corruption pretraining (T5's objective, Raffel et al. 2020).

`synth_jax_c4_span_corruption` reads TFDS `c4/en`, tokenizes each document's
text, keeps one random chunk of at most 65,536 tokens of each document, joins
runs of 128 documents into one stream (dropping id-0 tokens, as T5 does) and
cuts it into chunks that become span-corruption examples
(`span_corruption.py`): noise density 0.15, mean span length 3, sentinels
from the vocabulary's extra ids. With `FEATURE_LENGTHS` (512/114) the chunks
are 568 tokens, the length that fills 512 input ids once corrupted, so nearly
every example is full length, as in T5.
"""
from typing import Optional

import seqio

from synth_jax.tasks import registration
from synth_jax.tasks import span_corruption
from synth_jax.tasks import vocabularies

TASK_NAME = 'synth_jax_c4_span_corruption'
TFDS_NAME = 'c4/en:3.1.0'
FEATURE_LENGTHS = {'inputs': 512, 'targets': 114}


def span_corruption_task(vocabulary: Optional[seqio.Vocabulary] = None,
                         tfds_name: str = TFDS_NAME,
                         tfds_data_dir: Optional[str] = None,
                         name: str = TASK_NAME) -> seqio.Task:
  """Builds (does not register) the C4 span-corruption task.

  Args:
    vocabulary: needs extra ids for sentinels; defaults to
      `vocabularies.default_vocabulary()` (T5's, 32000 + 100 extra ids).
    tfds_name: TFDS dataset with a 'text' feature and train/validation
      splits.
    tfds_data_dir: TFDS data directory; None uses TFDS's default.
    name: task name.

  Returns:
    A `seqio.Task` yielding `{'inputs', 'targets'}` int32 ids ending in EOS,
    at most the feature lengths passed to `get_dataset` (512/114 defaults).
  """
  vocabulary = vocabulary or vocabularies.default_vocabulary()
  return seqio.Task(
      name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name,
                                  tfds_data_dir=tfds_data_dir,
                                  splits=('train', 'validation')),
      preprocessors=span_corruption.pretraining_preprocessors(),
      output_features=vocabularies.output_features(vocabulary),
      metric_fns=[])


def register(vocabulary: Optional[seqio.Vocabulary] = None,
             tfds_data_dir: Optional[str] = None) -> seqio.Task:
  """Registers `synth_jax_c4_span_corruption` (idempotent)."""
  return registration.register_task(
      span_corruption_task(vocabulary, tfds_data_dir=tfds_data_dir))


register()
