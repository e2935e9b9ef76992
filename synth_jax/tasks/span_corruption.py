"""T5's span-corruption objective (Raffel et al. 2020, sec. 3.3.4) on tf.data.

About `noise_density` of a chunk's tokens, in spans of mean length
`mean_noise_span_length`, are dropped from the inputs, each span replaced by one
sentinel; the targets are the dropped spans, each led by the same sentinel.
Spans alternate non-noise / noise, starting with non-noise, e.g. for 8 tokens:

  tokens   a b c d e f g h       noise mask  0 1 1 0 0 1 1 1
  inputs   a <S0> d e <S1>       targets     <S0> b c <S1> f g h

Sentinel k is `<extra_id_k>` = `vocab_size - 1 - k`: the vocabulary's extra ids
counted down from the top. Corruption runs before
`seqio.preprocessors.append_eos_after_trim`, so neither output holds an EOS
here; the EOS that seqio appends is accounted for in the length arithmetic.
"""
import functools
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
CHUNK_LENGTH = 65536


def first_sentinel_id(vocabulary: seqio.Vocabulary) -> int:
  """Id of `<extra_id_0>`, the top id; later sentinels count down from it.

  Args:
    vocabulary: a vocabulary with extra ids.

  Returns:
    `vocabulary.vocab_size - 1`.

  Raises:
    ValueError: the vocabulary has no extra ids to use as sentinels.
  """
  if not vocabulary.extra_ids:
    raise ValueError(
        f'Span corruption needs sentinel ids, but {type(vocabulary).__name__} '
        'has extra_ids=0. Build the vocabulary with extra ids, e.g. '
        'synth_jax.tasks.vocabularies.byte_vocabulary(extra_ids=100) or '
        'seqio.SentencePieceVocabulary(path, extra_ids=100).')
  return vocabulary.vocab_size - 1


def noise_counts(num_tokens: int,
                 noise_density: float = NOISE_DENSITY,
                 mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                 ) -> Tuple[int, int]:
  """(noise tokens, noise spans) in a chunk of `num_tokens` tokens.

  Python twin of the counts inside `random_spans_noise_mask` (same float32
  arithmetic and round-half-to-even), used to size chunks ahead of time.
  A chunk of fewer than 2 tokens is left uncorrupted: (0, 0).
  """
  if num_tokens < 2:
    return 0, 0
  # float32, as T5's TF ops: 190 * 0.15 is 28.500002 in float32 (29 noise
  # tokens) but 28.5 in float64, which rounds half to even (28).
  noise = int(np.round(np.float32(num_tokens) * np.float32(noise_density)))
  # At least one token of each kind, so both inputs and targets say something.
  noise = min(max(noise, 1), num_tokens - 1)
  spans = int(np.round(np.float32(noise) /
                       np.float32(mean_noise_span_length)))
  # T5 clamps spans only from below; the upper bound (every noise span needs
  # a non-noise span before it) binds only where T5's mask fails to build.
  spans = min(max(spans, 1), noise, num_tokens - noise)
  return noise, spans


def span_corruption_lengths(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> Tuple[int, int, int]:
  """Chunk length that fills `inputs_length` after corruption and EOS.

  A chunk of L tokens with n noise tokens in s spans becomes inputs of
  L - n + s + 1 ids and targets of n + s + 1 ids (one sentinel per span, one
  EOS). Chunks can be shorter than the chunk length (a document's tail), so
  the chunk length is the largest L for which every L' <= L fits.

  Args:
    inputs_length: the `inputs` feature length, EOS included.
    noise_density: fraction of tokens that are noise.
    mean_noise_span_length: mean length of a noise span.

  Returns:
    (tokens_length, targets_length, max_spans): the chunk length, the longest
    targets (EOS included) and the most spans any chunk up to that length
    gets. E.g. 512 -> (568, 114, 28), T5's pretraining lengths.

  Raises:
    ValueError: `inputs_length` is too short to hold any corrupted chunk.
  """
  tokens_length = targets_length = max_spans = 0
  for length in range(1, 64 * inputs_length + 2):
    noise, spans = noise_counts(length, noise_density, mean_noise_span_length)
    if length - noise + spans + 1 > inputs_length:
      break
    tokens_length = length
    targets_length = max(targets_length, noise + spans + 1)
    max_spans = max(max_spans, spans)
  if tokens_length < 2:
    raise ValueError(
        f'inputs length {inputs_length} is too short for span corruption; '
        "raise the task feature length 'inputs' (T5 uses 512).")
  return tokens_length, targets_length, max_spans


def _noise_counts_tf(length, noise_density, mean_noise_span_length):
  """`noise_counts` in TF ops, for `length` >= 2 (int32 scalar tensors)."""
  noise = tf.cast(tf.round(tf.cast(length, tf.float32) *
                           tf.constant(noise_density, tf.float32)), tf.int32)
  noise = tf.clip_by_value(noise, 1, length - 1)
  spans = tf.cast(tf.round(tf.cast(noise, tf.float32) /
                           tf.constant(mean_noise_span_length, tf.float32)),
                  tf.int32)
  spans = tf.minimum(tf.maximum(spans, 1), tf.minimum(noise, length - noise))
  return noise, spans


def _random_partition(total, num_parts, seed):
  """Uniformly random composition of `total` into `num_parts` positive parts.

  Picking `num_parts - 1` distinct cut points among the `total - 1` gaps
  between items, uniformly, makes every composition equally likely.

  Returns:
    int32 `[num_parts]`, each >= 1, summing to `total`.
  """
  scores = tf.random.stateless_uniform([total - 1], seed=seed)
  cuts = tf.sort(tf.argsort(scores)[:num_parts - 1]) + 1
  bounds = tf.concat([[0], tf.cast(cuts, tf.int32), [total]], axis=0)
  return bounds[1:] - bounds[:-1]


def random_spans_noise_mask(
    length,
    seeds: Sequence[tf.Tensor],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
  """Noise mask of alternating random spans, starting with non-noise.

  The counts are fixed by `noise_counts`; given them, every arrangement of
  positive span lengths is equally likely. Chunks shorter than 2 get no noise.

  Args:
    length: int32 scalar, number of tokens.
    seeds: two stateless seeds, each int `[2]`: non-noise and noise lengths.
    noise_density: fraction of tokens that are noise.
    mean_noise_span_length: mean length of a noise span.

  Returns:
    bool `[length]`, True at noise tokens.
  """
  length = tf.convert_to_tensor(length, tf.int32)
  # Build for >= 2 tokens and trim, so the graph has no data-dependent branch;
  # the one- and zero-token masks come out all False.
  padded_length = tf.maximum(length, 2)
  noise, spans = _noise_counts_tf(padded_length, noise_density,
                                  mean_noise_span_length)
  nonnoise_lengths = _random_partition(padded_length - noise, spans, seeds[0])
  noise_lengths = _random_partition(noise, spans, seeds[1])
  span_lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], 1),
                            [-1])
  span_is_noise = tf.tile([False, True], [spans])
  return tf.repeat(span_is_noise, span_lengths)[:length]


def _spans_to_sentinels(tokens, span_mask, first_sentinel):
  """Replaces each run of True in `span_mask` with one sentinel, in order."""
  previous = tf.concat([[False], span_mask[:-1]], axis=0)
  span_start = tf.logical_and(span_mask, tf.logical_not(previous))
  sentinels = (tf.cast(first_sentinel + 1, tokens.dtype) -
               tf.cumsum(tf.cast(span_start, tokens.dtype)))
  replaced = tf.where(span_start, sentinels, tokens)
  return tf.boolean_mask(
      replaced, tf.logical_or(tf.logical_not(span_mask), span_start))


def corrupt_spans(tokens: tf.Tensor, noise_mask: tf.Tensor,
                  first_sentinel: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Splits `tokens` into span-corruption inputs and targets.

  Args:
    tokens: int `[length]` token ids.
    noise_mask: bool `[length]`; must start with a non-noise token (as
      `random_spans_noise_mask` guarantees) so sentinel k marks noise span k
      in both outputs.
    first_sentinel: id of `<extra_id_0>`; span k gets `first_sentinel - k`.

  Returns:
    (inputs, targets): int `[length - noise + spans]` with each noise span
    replaced by its sentinel, and int `[noise + spans]` with each non-noise
    span replaced by the sentinel of the noise span that follows it.
  """
  inputs = _spans_to_sentinels(tokens, noise_mask, first_sentinel)
  targets = _spans_to_sentinels(tokens, tf.logical_not(noise_mask),
                                first_sentinel)
  # Without noise the targets would be one sentinel no input refers to.
  has_noise = tf.reduce_any(noise_mask)
  return inputs, targets[:tf.where(has_noise, tf.size(targets), 0)]


def split_tokens(dataset: tf.data.Dataset, max_tokens: int,
                 feature_key: str = 'targets') -> tf.data.Dataset:
  """Cuts each example's `feature_key` ids into chunks of `max_tokens`.

  Args:
    dataset: examples with int `[length]` ids under `feature_key`.
    max_tokens: chunk length; the last chunk of a sequence may be shorter.
    feature_key: the feature to split; other features are dropped (a chunk
      no longer matches its example's text).

  Returns:
    Examples `{feature_key: int [<= max_tokens]}`, chunks in order; empty
    sequences give no chunk.
  """

  def to_chunks(features):
    tokens = features[feature_key]
    num_tokens = tf.size(tokens)
    num_chunks = (num_tokens + max_tokens - 1) // max_tokens
    chunk_lengths = tf.minimum(
        max_tokens, num_tokens - tf.range(num_chunks) * max_tokens)
    return {feature_key: tf.RaggedTensor.from_row_lengths(tokens,
                                                          chunk_lengths)}

  return dataset.map(to_chunks, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


@seqio.map_over_dataset(num_seeds=1)
def _random_chunk(features, seed, chunk_length, feature_key):
  tokens = features[feature_key]
  num_chunks = (tf.size(tokens) + chunk_length - 1) // chunk_length
  chunk = tf.random.stateless_uniform([], seed=seed, maxval=num_chunks,
                                      dtype=tf.int32)
  start = chunk * chunk_length
  return {feature_key: tokens[start:start + chunk_length]}


def select_random_chunk(dataset: tf.data.Dataset,
                        chunk_length: int = CHUNK_LENGTH,
                        feature_key: str = 'targets') -> tf.data.Dataset:
  """Keeps one random `chunk_length`-token chunk of each document.

  As T5, a document is cut into consecutive chunks of `chunk_length` (the
  last may be shorter) and one is picked uniformly, so no document of many
  chunks dominates a stream. Draws come from seqio's map seeds, like
  `span_corruption`'s.

  Args:
    dataset: examples with int `[length]` ids under `feature_key`.
    chunk_length: longest chunk kept (T5: 65536).
    feature_key: the feature to cut; other features are dropped.

  Returns:
    Examples `{feature_key: int [<= chunk_length]}`, each starting at a
    multiple of `chunk_length` in its document; empty documents are dropped.
  """
  dataset = dataset.filter(lambda features: tf.size(features[feature_key]) > 0)
  return _random_chunk(dataset, chunk_length=chunk_length,
                       feature_key=feature_key)


def concatenate_tokens(dataset: tf.data.Dataset,
                       documents_per_stream: int = 128,
                       feature_key: str = 'targets') -> tf.data.Dataset:
  """Joins each run of `documents_per_stream` documents into one token stream.

  T5 concatenates documents before chunking (no separator), so that nearly
  every chunk is full length and examples fill the feature lengths without
  relying on packing.

  Args:
    dataset: examples with int `[length]` ids under `feature_key`.
    documents_per_stream: documents per stream (T5: 128).
    feature_key: the feature to join; other features are dropped.

  Returns:
    Examples `{feature_key: int [total length]}`, documents in order, without
    any id-0 token.
  """

  def join(batch):
    tokens = batch[feature_key].flat_values
    # T5 joins through a zero-padded batch and strips every 0 as padding, so
    # id-0 (PAD) tokens inside documents go too.
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

  dataset = dataset.map(lambda features: {feature_key: features[feature_key]},
                        num_parallel_calls=tf.data.AUTOTUNE)
  return dataset.ragged_batch(documents_per_stream).map(
      join, num_parallel_calls=tf.data.AUTOTUNE)


@seqio.map_over_dataset(num_seeds=2)
def _corrupt_example(features, seeds, first_sentinel, noise_density,
                     mean_noise_span_length, feature_key):
  tokens = features[feature_key]
  noise_mask = random_spans_noise_mask(tf.size(tokens), seeds, noise_density,
                                       mean_noise_span_length)
  inputs, targets = corrupt_spans(tokens, noise_mask, first_sentinel)
  return {'inputs': inputs, 'targets': targets}


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]],
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
    feature_key: str = 'targets',
) -> tf.data.Dataset:
  """seqio preprocessor: tokenized text -> span-corruption examples.

  Place after `seqio.preprocessors.tokenize` (and `select_random_chunk`,
  `concatenate_tokens`) and before `seqio.preprocessors.append_eos_after_trim`.
  Chunks are sized by `span_corruption_lengths(sequence_length['inputs'])` so
  that, EOS included, inputs never exceed the inputs length and targets need
  at most the length it reports (114 for 512). Noise is drawn from seqio's
  map seeds, so a dataset built under `seqio.map_seed_manager(seed)` (or
  `task.get_dataset(..., seed=seed)`) is reproducible.

  Args:
    dataset: examples with int `[length]` token ids under `feature_key`.
    sequence_length: task feature lengths; needs 'inputs' and 'targets'.
    output_features: the task's features; sentinels come from the `targets`
      vocabulary (inputs and targets must share it).
    noise_density: fraction of tokens that are noise.
    mean_noise_span_length: mean length of a noise span.
    feature_key: feature holding the uncorrupted tokens.

  Returns:
    Examples `{'inputs': int [<= inputs_length - 1],
    'targets': int [<= targets_length - 1]}`, without EOS.

  Raises:
    ValueError: missing lengths, a targets length too short to hold the
      corrupted spans, or too few extra ids for the number of spans.
  """
  if not sequence_length or not sequence_length.get('inputs') or (
      not sequence_length.get('targets')):
    raise ValueError(
        'span corruption sizes its chunks from the feature lengths; pass '
        "sequence_length={'inputs': ..., 'targets': ...} to get_dataset "
        "(T5: {'inputs': 512, 'targets': 114}), got "
        f'{sequence_length!r}.')
  vocabulary = output_features['targets'].vocabulary
  first_sentinel = first_sentinel_id(vocabulary)
  tokens_length, targets_length, max_spans = span_corruption_lengths(
      sequence_length['inputs'], noise_density, mean_noise_span_length)
  if sequence_length['targets'] < targets_length:
    raise ValueError(
        f"inputs length {sequence_length['inputs']} makes span-corruption "
        f'targets of up to {targets_length} tokens, but the targets length '
        f"is {sequence_length['targets']}: set the task feature length "
        f"'targets' to at least {targets_length}.")
  if max_spans > vocabulary.extra_ids:
    raise ValueError(
        f'chunks of {tokens_length} tokens get up to {max_spans} noise spans '
        f'but the vocabulary has only {vocabulary.extra_ids} extra ids to '
        'mark them; build the vocabulary with more extra_ids or lower the '
        "'inputs' feature length.")
  dataset = split_tokens(dataset, tokens_length, feature_key)
  return _corrupt_example(
      dataset, first_sentinel=first_sentinel, noise_density=noise_density,
      mean_noise_span_length=mean_noise_span_length, feature_key=feature_key)


def merge_inputs_and_targets(inputs: Sequence[int], targets: Sequence[int],
                             vocabulary: seqio.Vocabulary) -> List[int]:
  """Undoes span corruption: puts each target span back at its sentinel.

  Args:
    inputs: int ids of a span-corruption input; anything from the first EOS
      on (EOS, padding) is ignored.
    targets: int ids of the matching targets, same convention.
    vocabulary: the vocabulary whose extra ids are the sentinels.

  Returns:
    The original, uncorrupted token ids.

  Raises:
    ValueError: the pair is not a consistent inputs/targets pair.
  """
  lowest_sentinel = first_sentinel_id(vocabulary) - vocabulary.extra_ids + 1

  def strip(ids):
    ids = [int(i) for i in ids]
    eos = vocabulary.eos_id
    if eos in ids:
      ids = ids[:ids.index(eos)]
    while ids and ids[-1] == vocabulary.pad_id:
      ids.pop()
    return ids

  spans = {}
  current = None
  for token in strip(targets):
    if token >= lowest_sentinel:
      current = spans.setdefault(token, [])
    elif current is None:
      raise ValueError('targets must start with a sentinel, got '
                       f'{list(targets)[:5]}...')
    else:
      current.append(token)
  merged = []
  for token in strip(inputs):
    if token < lowest_sentinel:
      merged.append(token)
    elif token in spans:
      merged.extend(spans.pop(token))
    else:
      raise ValueError(f'sentinel {token} in inputs has no span in targets.')
  if spans:
    raise ValueError(
        f'target spans {sorted(spans)} have no sentinel in inputs.')
  return merged


def pretraining_preprocessors() -> list:
  """The T5 pretraining chain for a text source with a `text` field, in seqio order."""
  return [
      functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      select_random_chunk,
      concatenate_tokens,
      span_corruption,
      seqio.preprocessors.append_eos_after_trim,
  ]
