"""seqio tasks of synth-jax; importing this package registers them.

Registered names (all prefixed `synth_jax_`, so they can live beside t5's):
  synth_jax_c4_span_corruption       C4 pretraining, T5 vocabulary, 512/114
  synth_jax_local_span_corruption    offline pydoc corpus, byte vocabulary
  synth_jax_glue_<benchmark>         see `glue.BENCHMARKS`
  synth_jax_super_glue_<benchmark>   see `superglue.BENCHMARKS`
  synth_jax_glue, synth_jax_super_glue   proportional mixtures

Importing reads no vocabulary and touches no network or TFDS data.
"""
from typing import Optional

import seqio

from synth_jax.tasks import c4
from synth_jax.tasks import glue
from synth_jax.tasks import local_corpus
from synth_jax.tasks import superglue
from synth_jax.tasks.vocabularies import byte_vocabulary
from synth_jax.tasks.vocabularies import default_vocabulary

__all__ = ['byte_vocabulary', 'c4', 'default_vocabulary', 'glue',
           'local_corpus', 'register_all', 'superglue']


def register_all(vocabulary: Optional[seqio.Vocabulary] = None,
                 tfds_data_dir: Optional[str] = None,
                 glue_tfds_version: str = glue.TFDS_VERSION) -> None:
  """Re-registers the C4, GLUE and SuperGLUE tasks with `vocabulary`.

  Use it to swap T5's vocabulary (the default) for another before building
  datasets, e.g. `register_all(seqio.SentencePieceVocabulary(path, 100))`.
  The local corpus task keeps its own vocabulary: see
  `local_corpus.register`.

  Args:
    vocabulary: the vocabulary for every task; None means T5's.
    tfds_data_dir: TFDS data directory; None uses TFDS's default.
    glue_tfds_version: TFDS glue version; '1.0.0' reproduces T5's data and
      mixing rates exactly (2.0.0, the default, changed QQP's source).
  """
  c4.register(vocabulary, tfds_data_dir)
  glue.register(vocabulary, tfds_data_dir, glue_tfds_version)
  superglue.register(vocabulary, tfds_data_dir)
