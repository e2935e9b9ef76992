"""An offline span-corruption corpus: the help texts bundled with Python.

`pydoc_data.topics.topics` (about 80 topics, ~0.5 MB of English prose and
code) ships with every CPython, so `synth_jax_local_span_corruption` trains
and evaluates with no download. The source yields paragraphs (blank-line
separated blocks); every tenth paragraph, in topic-name order, is held out as
the 'validation' split. As for C4, runs of paragraphs are joined and cut
into full-length span-corruption chunks. The default vocabulary is bytes with
100 sentinel ids; `sentencepiece_vocabulary()` trains a small SentencePiece
model on the training split instead (lossless: identity normalization,
whitespace kept, byte fallback), cached in the user's cache directory.
"""
import hashlib
import io
import os
import re
import tempfile
from typing import List, Optional

import pydoc_data.topics
import seqio
import sentencepiece
import tensorflow as tf

from synth_jax.tasks import registration
from synth_jax.tasks import span_corruption
from synth_jax.tasks import vocabularies

TASK_NAME = 'synth_jax_local_span_corruption'
FEATURE_LENGTHS = {'inputs': 128, 'targets': 32}
SPLITS = ('train', 'validation')
_VALIDATION_EVERY = 10


def paragraphs(split: str) -> List[str]:
  """The paragraphs of one split, in a fixed order.

  Args:
    split: 'train' or 'validation'.

  Returns:
    Non-empty paragraphs (blank-line separated blocks, stripped), topics in
    name order; every tenth paragraph is 'validation', the rest 'train'.
  """
  if split not in SPLITS:
    raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
  everything = [p.strip()
                for _, text in sorted(pydoc_data.topics.topics.items())
                for p in re.split(r'\n\s*\n', text) if p.strip()]
  is_validation = split == 'validation'
  return [p for i, p in enumerate(everything)
          if (i % _VALIDATION_EVERY == _VALIDATION_EVERY - 1) == is_validation]


def _dataset_fn(split: str, shuffle_files: bool,
                seed: Optional[int] = None) -> tf.data.Dataset:
  texts = paragraphs(split)
  dataset = tf.data.Dataset.from_tensor_slices({'text': texts})
  if shuffle_files:
    dataset = dataset.shuffle(len(texts), seed=seed)
  return dataset


def span_corruption_task(vocabulary: Optional[seqio.Vocabulary] = None,
                         name: str = TASK_NAME) -> seqio.Task:
  """Builds (does not register) the local span-corruption task.

  Args:
    vocabulary: needs extra ids for sentinels; defaults to
      `vocabularies.byte_vocabulary()` (bytes + 100 extra ids).
    name: task name.

  Returns:
    A `seqio.Task` with 'train' and 'validation' splits yielding
    `{'inputs', 'targets'}` int32 ids ending in EOS, within the feature
    lengths passed to `get_dataset` (`FEATURE_LENGTHS` suits the demo).
  """
  vocabulary = vocabulary or vocabularies.byte_vocabulary()
  return seqio.Task(
      name,
      source=seqio.FunctionDataSource(
          _dataset_fn, splits=SPLITS,
          num_input_examples={s: len(paragraphs(s)) for s in SPLITS}),
      preprocessors=span_corruption.pretraining_preprocessors(),
      output_features=vocabularies.output_features(vocabulary),
      metric_fns=[])


def _cache_dir() -> str:
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'synth_jax')


def sentencepiece_vocabulary(
    vocab_size: int = 2000,
    extra_ids: int = vocabularies.DEFAULT_EXTRA_IDS,
    cache_dir: Optional[str] = None,
) -> seqio.SentencePieceVocabulary:
  """A unigram SentencePiece model of the training paragraphs, cached.

  Trained once (a few seconds) and stored under `cache_dir` (default
  `$XDG_CACHE_HOME/synth_jax` or `~/.cache/synth_jax`), keyed by the corpus
  text and the settings, so a new Python's docs get a new model. Ids follow
  T5: 0 PAD, 1 EOS, 2 UNK, no BOS; unknown characters fall back to bytes.

  Args:
    vocab_size: pieces in the model, before `extra_ids`.
    extra_ids: sentinel ids appended by seqio.
    cache_dir: where the model file lives.

  Returns:
    The vocabulary; `vocab_size` == `vocab_size` + `extra_ids`.
  """
  lines = [line for text in paragraphs('train') for line in text.splitlines()
           if line.strip()]
  settings = dict(
      vocab_size=vocab_size, model_type='unigram', character_coverage=1.0,
      byte_fallback=True, normalization_rule_name='identity',
      remove_extra_whitespaces=False, pad_id=0, eos_id=1, unk_id=2,
      bos_id=-1)
  digest = hashlib.sha256(
      repr((sorted(settings.items()), lines)).encode('utf-8')).hexdigest()[:12]
  cache_dir = cache_dir or _cache_dir()
  path = os.path.join(cache_dir, f'pydoc_unigram_{vocab_size}_{digest}.model')
  if not os.path.exists(path):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, num_threads=2,
        minloglevel=2, **settings)
    os.makedirs(cache_dir, exist_ok=True)
    # Write then rename, so a concurrent reader never sees half a model.
    with tempfile.NamedTemporaryFile(dir=cache_dir, delete=False) as f:
      f.write(model.getvalue())
    os.replace(f.name, path)
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def register(vocabulary: Optional[seqio.Vocabulary] = None) -> seqio.Task:
  """Registers `synth_jax_local_span_corruption` (idempotent)."""
  return registration.register_task(span_corruption_task(vocabulary))


register()
