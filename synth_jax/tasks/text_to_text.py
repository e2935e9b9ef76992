"""The seqio task shape every GLUE / SuperGLUE benchmark shares: TFDS text -> T5 text format."""
from typing import Callable, Mapping, Optional, Sequence

import seqio

from synth_jax.tasks import vocabularies


def tfds_text_to_text_task(name: str, tfds_name: str, splits: Mapping[str, str],
                           text_preprocessors: Sequence[Callable], postprocess_fn: Callable,
                           metric_fns: Sequence[Callable],
                           vocabulary: Optional[seqio.Vocabulary] = None,
                           tfds_data_dir: Optional[str] = None) -> seqio.Task:
  """A task reading `tfds_name`, formatting it with `text_preprocessors`, then tokenizing.

  vocabulary: defaults to `vocabularies.default_vocabulary()` (T5's SentencePiece model).
  """
  return seqio.Task(
      name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=tfds_data_dir,
                                  splits=dict(splits)),
      preprocessors=list(text_preprocessors) + [
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=vocabularies.output_features(
          vocabulary or vocabularies.default_vocabulary()),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns))
