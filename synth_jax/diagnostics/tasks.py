"""Synthetic diagnostic tasks, generated on device: pure `jax.random` functions of static shapes.

Each generator is `generate(key, batch_size, length, **options) -> Batch` with

    inputs     [batch, length] int32   the tokens the model reads
    targets    [batch, length] int32   the next token at each position (the answer where asked)
    loss_mask  [batch, length] float32 1 exactly at the answers: loss and accuracy are taken there
    answer_positions  [batch, n] int32  positions that hold every answer of a row (`n` fixed by
               the task and length; induction's may include non-answers, which `loss_mask` zeroes):
               training computes the vocabulary projection there alone

Token ids: 0 is never produced (padding elsewhere in synth-jax), 1 is BLANK (filler, Mamba's
noise), 2 is MARKER; content tokens are `[3, vocab_size)`. Recall tasks split the content ids into
two disjoint halves, keys below values (Zoology's convention).

  mqar            Zoology's multi-query associative recall (Arora et al. 2023, Sec. 3.1)
  induction       random tokens, then a repeat of a random-length suffix (induction heads)
  selective_copy  Mamba's selective copying (Gu & Dao 2023, Sec. 3.1)
  overwrite       associative recall with every key bound twice: the later binding wins
`extrapolation` is a protocol on top of these (train at L, evaluate at 2L, 4L): see
`extrapolation.py`.
"""
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
Batch = dict[str, Array]

PAD, BLANK, MARKER = 0, 1, 2
FIRST_CONTENT = 3


def key_and_value_ranges(vocab_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """`(key ids [lo, hi), value ids [lo, hi))`: the content ids split in two disjoint halves."""
  middle = FIRST_CONTENT + (vocab_size - FIRST_CONTENT) // 2
  return (FIRST_CONTENT, middle), (middle, vocab_size)


def sample_distinct(key, batch_size: int, count: int, low: int, high: int) -> Array:
  """`[batch, count]` int32: per row, `count` distinct ids of `[low, high)`, uniformly."""
  if count > high - low:
    raise ValueError(f'cannot draw {count} distinct tokens from {high - low} ids [{low}, {high}); '
                     'raise vocab_size or ask for fewer.')
  # The top-k of i.i.d. noise is a uniformly random subset, in random order.
  _, index = jax.lax.top_k(jax.random.uniform(key, (batch_size, high - low)), count)
  return (low + index).astype(jnp.int32)


def power_law_slots(key, batch_size: int, count: int, space: int, alpha: float) -> Array:
  """`[batch, count]` distinct slots of `[0, space)`, slot s weighted `alpha (s + 1)^(alpha - 1)`
  and drawn without replacement (Zoology's query placement: early slots, so short gaps, most
  likely). Gumbel top-k is sequential weighted sampling without replacement."""
  log_weights = (alpha - 1.0) * jnp.log(jnp.arange(1, space + 1, dtype=jnp.float32))
  gumbel = jax.random.gumbel(key, (batch_size, space))
  _, slots = jax.lax.top_k(log_weights + gumbel, count)
  return slots.astype(jnp.int32)


def next_token_batch(sequence: Array, answer_positions: Array, answers: Array) -> Batch:
  """From `[batch, length + 1]` tokens: inputs `[:, :-1]`, targets the next token except at
  `answer_positions` `[batch, n]`, where they are `answers` `[batch, n]`, the only positions the
  loss sees."""
  rows = jnp.arange(sequence.shape[0])[:, None]
  targets = sequence[:, 1:].at[rows, answer_positions].set(answers)
  loss_mask = jnp.zeros(targets.shape, jnp.float32).at[rows, answer_positions].set(1.0)
  return {'inputs': sequence[:, :-1].astype(jnp.int32), 'targets': targets.astype(jnp.int32),
          'loss_mask': loss_mask, 'answer_positions': answer_positions.astype(jnp.int32)}


def associative_recall(key, batch_size: int, length: int, *, vocab_size: int, num_kv_pairs: int,
                       bindings: int = 1, alpha: float = 0.01) -> Batch:
  """Key-value bindings, then every key queried once; the answer is its last bound value.

  Context: `num_kv_pairs * bindings` (key, value) pairs in random order (each key appears
  `bindings` times; consecutive bindings of a key take different values). Then a query region of
  BLANKs with each key at an even offset drawn by `power_law_slots`; the target at a query key is
  the value of that key's latest binding (the value itself never follows the query, as in
  Zoology). Needs `length >= 2 * num_kv_pairs * (bindings + 1)`.
  """
  pairs = num_kv_pairs * bindings
  space = (length - 2 * pairs) // 2
  if space < num_kv_pairs:
    raise ValueError(f'length {length} is too short for {num_kv_pairs} keys bound {bindings}x: '
                     f'it needs {2 * num_kv_pairs * (bindings + 1)}; raise the length or lower '
                     'num_kv_pairs.')
  (key_lo, key_hi), (value_lo, value_hi) = key_and_value_ranges(vocab_size)
  if value_hi - value_lo < 2:
    raise ValueError(f'vocab_size {vocab_size} leaves fewer than 2 value ids.')
  k_keys, k_first, k_step, k_order, k_slots = jax.random.split(key, 5)
  keys = sample_distinct(k_keys, batch_size, num_kv_pairs, key_lo, key_hi)       # [b, n]
  values_count = value_hi - value_lo
  first = jax.random.randint(k_first, (batch_size, num_kv_pairs, 1), 0, values_count)
  steps = jax.random.randint(k_step, (batch_size, num_kv_pairs, bindings - 1), 1, values_count)
  offsets = jnp.cumsum(jnp.concatenate([first, steps], axis=2), axis=2)
  values = value_lo + offsets % values_count                                     # [b, n, bindings]
  # Item j * bindings + c is binding c of key j; order[b, s] is the item at context slot s.
  order = jnp.argsort(jax.random.uniform(k_order, (batch_size, pairs)), axis=1)
  slot_of_item = jnp.argsort(order, axis=1).reshape(batch_size, num_kv_pairs, bindings)
  latest = jnp.argmax(slot_of_item, axis=2)                                      # [b, n]
  answers = jnp.take_along_axis(values, latest[:, :, None], axis=2)[:, :, 0]
  slot_keys = jnp.take_along_axis(keys, order // bindings, axis=1)
  slot_values = jnp.take_along_axis(values.reshape(batch_size, pairs), order, axis=1)
  context = jnp.stack([slot_keys, slot_values], axis=2).reshape(batch_size, 2 * pairs)
  query_at = 2 * power_law_slots(k_slots, batch_size, num_kv_pairs, space, alpha)
  rows = jnp.arange(batch_size)[:, None]
  queries = jnp.full((batch_size, length + 1 - 2 * pairs), BLANK, jnp.int32)
  queries = queries.at[rows, query_at].set(keys)
  sequence = jnp.concatenate([context, queries], axis=1)
  return next_token_batch(sequence, 2 * pairs + query_at, answers)


def mqar(key, batch_size: int, length: int, *, vocab_size: int, num_kv_pairs: int,
         alpha: float = 0.01) -> Batch:
  """Multi-query associative recall (Zoology): `num_kv_pairs` bindings, then every key asked."""
  return associative_recall(key, batch_size, length, vocab_size=vocab_size,
                            num_kv_pairs=num_kv_pairs, bindings=1, alpha=alpha)


def overwrite(key, batch_size: int, length: int, *, vocab_size: int, num_kv_pairs: int,
              alpha: float = 0.01) -> Batch:
  """Each key bound twice to different values at random places; the later binding is the answer,
  so which value counts is decided by context (order), not by the key alone."""
  return associative_recall(key, batch_size, length, vocab_size=vocab_size,
                            num_kv_pairs=num_kv_pairs, bindings=2, alpha=alpha)


def induction(key, batch_size: int, length: int, *, vocab_size: int) -> Batch:
  """Random tokens, then a repeat of the last `period` of them (Olsson et al. 2022's induction).

  Per example the period is drawn from `[length // 4, length // 2]`, so the repeat sits at no
  fixed offset and position alone (a synthesizer's map, a relative bias) cannot find it.
  Answers: every token of the repeat after its first, each predictable only by finding the
  previous token's earlier occurrence and copying its successor. The tokens before the repeat are
  distinct when the content vocabulary has enough ids (the lookup is then unambiguous), else
  drawn uniformly.
  """
  total = length + 1
  shortest, longest = max(length // 4, 1), max(length // 2, 1)
  k_period, k_tokens = jax.random.split(key)
  period = jax.random.randint(k_period, (batch_size, 1), shortest, longest + 1)
  fresh = total - shortest
  if vocab_size - FIRST_CONTENT >= fresh:
    tokens = sample_distinct(k_tokens, batch_size, fresh, FIRST_CONTENT, vocab_size)
  else:
    tokens = jax.random.randint(k_tokens, (batch_size, fresh), FIRST_CONTENT, vocab_size,
                                jnp.int32)
  index = jnp.arange(total)[None, :]
  # Position i of the repeat (the last `period` tokens) copies position i - period.
  repeat_starts = total - period
  sequence = jnp.take_along_axis(tokens, jnp.where(index < repeat_starts, index, index - period),
                                 axis=1)
  answers = index[:, :-1] >= repeat_starts  # target t is token t + 1: inside the repeat, not first
  # At most `longest - 1` answers, all among the last positions.
  last = max(longest - 1, 1)
  positions = jnp.broadcast_to(jnp.arange(length - last, length, dtype=jnp.int32),
                               (batch_size, last))
  return {'inputs': sequence[:, :-1], 'targets': sequence[:, 1:],
          'loss_mask': answers.astype(jnp.float32), 'answer_positions': positions}


def selective_copy(key, batch_size: int, length: int, *, vocab_size: int,
                   num_tokens: int) -> Batch:
  """`num_tokens` content tokens at random places among BLANK noise (a context of
  `length - num_tokens`), then `num_tokens` MARKERs; at the i-th marker the answer is the i-th
  content token. Answers are not fed back (Mamba's form), so the model must count."""
  context_length = length - num_tokens
  if context_length < num_tokens:
    raise ValueError(f'length {length} is too short to hide {num_tokens} tokens: it needs '
                     f'{2 * num_tokens}.')
  k_places, k_tokens = jax.random.split(key)
  places = jnp.sort(sample_distinct(k_places, batch_size, num_tokens, 0, context_length), axis=1)
  tokens = jax.random.randint(k_tokens, (batch_size, num_tokens), FIRST_CONTENT, vocab_size,
                              jnp.int32)
  rows = jnp.arange(batch_size)[:, None]
  context = jnp.full((batch_size, context_length), BLANK, jnp.int32).at[rows, places].set(tokens)
  markers = jnp.full((batch_size, num_tokens + 1), MARKER, jnp.int32)
  sequence = jnp.concatenate([context, markers], axis=1)
  positions = jnp.broadcast_to(jnp.arange(context_length, length), (batch_size, num_tokens))
  return next_token_batch(sequence, positions, tokens)


GENERATORS = {'mqar': mqar, 'induction': induction, 'selective_copy': selective_copy,
              'overwrite': overwrite}
TASKS = (*GENERATORS, 'extrapolation')


@dataclasses.dataclass(frozen=True)
class Task:
  """A generator with its options bound, at its training `length`.

  Attributes:
    name: a key of `GENERATORS`.
    length: the training length L.
    vocab_size: token ids `[0, vocab_size)`.
    options: the generator's other options as `(name, value)` pairs, e.g. `num_kv_pairs`.
  """
  name: str
  length: int
  vocab_size: int
  options: Any = ()

  def __post_init__(self):
    if self.name not in GENERATORS:
      raise ValueError(f'unknown task {self.name!r}; tasks: {", ".join(GENERATORS)}.')
    object.__setattr__(self, 'options', tuple(sorted(dict(self.options).items())))

  def generate(self, key, batch_size: int, length: int = None) -> Batch:
    """A batch (see the module docstring) at `length` (default: the training length)."""
    return _generate(self, key, batch_size, length or self.length)

  @property
  def chance(self) -> float:
    """Accuracy of a uniform guess among the ids an answer can take."""
    if self.name in ('mqar', 'overwrite'):
      (_, _), (value_lo, value_hi) = key_and_value_ranges(self.vocab_size)
      return 1.0 / (value_hi - value_lo)
    return 1.0 / (self.vocab_size - FIRST_CONTENT)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _generate(task: Task, key, batch_size: int, length: int) -> Batch:
  return GENERATORS[task.name](key, batch_size, length, vocab_size=task.vocab_size,
                               **dict(task.options))
