"""Vocabularies for synth-jax tasks, and the output features built on them.

Every function here builds a fresh `seqio.Vocabulary`; none reads a file until
the vocabulary is first used, so importing the tasks never touches GCS. Gin
binds these functions (e.g. `default_vocabulary.sentencepiece_model_file`);
they never read gin themselves.
"""
from typing import Mapping

import seqio

# T5's English C4 vocabulary (Raffel et al. 2020): 32000 SentencePiece pieces,
# to which seqio appends 100 extra ids used as span-corruption sentinels.
DEFAULT_SENTENCEPIECE_MODEL = (
    'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model')
DEFAULT_EXTRA_IDS = 100


def default_vocabulary(
    sentencepiece_model_file: str = DEFAULT_SENTENCEPIECE_MODEL,
    extra_ids: int = DEFAULT_EXTRA_IDS,
) -> seqio.SentencePieceVocabulary:
  """T5's SentencePiece vocabulary (32000 pieces + 100 sentinels = 32100 ids).

  Args:
    sentencepiece_model_file: path of a SentencePiece model (local or gs://).
      The model is loaded lazily, on the first encode or decode.
    extra_ids: number of ids appended after the model's pieces; span
      corruption uses them as sentinels, highest id first.

  Returns:
    The vocabulary; `vocab_size` == pieces + `extra_ids`.
  """
  return seqio.SentencePieceVocabulary(sentencepiece_model_file,
                                       extra_ids=extra_ids)


def byte_vocabulary(extra_ids: int = DEFAULT_EXTRA_IDS) -> seqio.ByteVocabulary:
  """UTF-8 byte vocabulary (ByT5): ids 0..2 PAD/EOS/UNK, byte b -> b + 3.

  Needs no file at all, so it powers the offline demo and the tests. Its
  `extra_ids` (default 100) come after the 259 byte ids and serve as
  span-corruption sentinels; without them span corruption has nothing to
  mark spans with.

  Args:
    extra_ids: number of sentinel ids appended after the byte ids.

  Returns:
    The vocabulary; `vocab_size` == 259 + `extra_ids`.
  """
  return seqio.ByteVocabulary(extra_ids=extra_ids)


def output_features(
    vocabulary: seqio.Vocabulary) -> Mapping[str, seqio.Feature]:
  """The text-to-text features every synth-jax task produces.

  Args:
    vocabulary: the vocabulary of both `inputs` and `targets`.

  Returns:
    `{'inputs', 'targets'}` -> `seqio.Feature` of int32 ids `[length]`, each
    ending in EOS. `inputs` is optional so decoder-only converters accept the
    tasks too.
  """
  return {
      'inputs': seqio.Feature(vocabulary=vocabulary, add_eos=True,
                              required=False),
      'targets': seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
