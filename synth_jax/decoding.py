"""Greedy and beam-search decoding on the attention decode cache.

Both encode once, create the decoder caches with one full-length `decode=True` call, then feed one
token per step (`Transformer.decode(..., decode=True)`), so each step costs one position.
Token 0 starts every target (and pads finished ones); `eos_id` (1 for T5 vocabularies) ends it.
"""
import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e9


def _encode_and_cache(model, variables, encoder_input_tokens, max_decode_length):
  batch = encoder_input_tokens.shape[0]
  encoded = model.apply(variables, encoder_input_tokens, enable_dropout=False, method=model.encode)
  full = jnp.ones((batch, max_decode_length), jnp.int32)
  _, state = model.apply(variables, encoded, encoder_input_tokens, full, full, enable_dropout=False,
                         decode=True, method=model.decode, mutable=['cache'])
  return encoded, state['cache']


def _step_logits(model, variables, cache, encoded, encoder_input_tokens, token, max_decode_length):
  """Log-probabilities `[batch, vocab]` of the next token after `token` `[batch]`; new cache."""
  token = token[:, None]
  logits, state = model.apply(
      {**variables, 'cache': cache}, encoded, encoder_input_tokens, token, jnp.ones_like(token),
      enable_dropout=False, decode=True, max_decode_length=max_decode_length,
      method=model.decode, mutable=['cache'])
  return jax.nn.log_softmax(logits[:, -1].astype(jnp.float32)), state['cache']


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length', 'eos_id'))
def greedy(model, variables, encoder_input_tokens, max_decode_length: int, eos_id: int = 1):
  """Greedy decoding: `[batch, max_decode_length]` tokens, 0 after each sequence's EOS."""
  encoded, cache = _encode_and_cache(model, variables, encoder_input_tokens, max_decode_length)
  batch = encoder_input_tokens.shape[0]

  def step(carry, _):
    token, cache, done = carry
    log_probs, cache = _step_logits(model, variables, cache, encoded, encoder_input_tokens, token,
                                    max_decode_length)
    next_token = jnp.where(done, 0, jnp.argmax(log_probs, axis=-1).astype(jnp.int32))
    done = done | (next_token == eos_id)
    return (next_token, cache, done), next_token

  start = (jnp.zeros((batch,), jnp.int32), cache, jnp.zeros((batch,), bool))
  _, tokens = jax.lax.scan(step, start, None, length=max_decode_length)
  return tokens.T


def _brevity_penalty(length, alpha):
  return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_length', 'beam_size', 'eos_id',
                                             'alpha'))
def beam_search(model, variables, encoder_input_tokens, max_decode_length: int, beam_size: int = 4,
                eos_id: int = 1, alpha: float = 0.6):
  """Beam search; returns the best `[batch, max_decode_length]` sequences and their scores.

  Scores are summed log-probabilities divided by T5's brevity penalty ((5 + len) / 6)^alpha.
  Finished beams stay in the beam and extend only with padding at no cost.
  """
  batch = encoder_input_tokens.shape[0]
  repeat = lambda x: jnp.repeat(x, beam_size, axis=0)
  tokens_in = repeat(encoder_input_tokens)
  encoded, cache = _encode_and_cache(model, variables, tokens_in, max_decode_length)
  flat = batch * beam_size

  def gather_beams(tree, beam_index):
    """Reorders batch-major leaves `[batch*beam, ...]` by `beam_index` `[batch, beam]`."""
    source = (jnp.arange(batch)[:, None] * beam_size + beam_index).reshape(-1)
    return jax.tree.map(lambda x: x[source] if x.ndim >= 2 and x.shape[0] == flat else x, tree)

  def step(carry, t):
    token, cache, scores, done, sequences, lengths = carry
    log_probs, cache = _step_logits(model, variables, cache, encoded, tokens_in, token.reshape(-1),
                                    max_decode_length)
    vocab = log_probs.shape[-1]
    log_probs = log_probs.reshape(batch, beam_size, vocab)
    # A finished beam continues only with padding (token 0), at no cost.
    pad_only = jnp.full((vocab,), NEG_INF).at[0].set(0.0)
    log_probs = jnp.where(done[..., None], pad_only, log_probs)
    candidates = scores[..., None] + log_probs
    # At t = 0 all beams are identical: keep only the first so the top-k are distinct.
    candidates = jnp.where((t == 0) & (jnp.arange(beam_size) > 0)[None, :, None], NEG_INF,
                           candidates)
    top_scores, top_index = jax.lax.top_k(candidates.reshape(batch, -1), beam_size)
    beam_index, next_token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    cache = gather_beams(cache, beam_index)
    take = lambda x: jnp.take_along_axis(x, beam_index, axis=1)
    sequences = jnp.take_along_axis(sequences, beam_index[..., None], axis=1).at[:, :, t].set(
        next_token)
    was_done = take(done)
    lengths = jnp.where(was_done, take(lengths), t + 1)
    done = was_done | (next_token == eos_id)
    return (next_token, cache, top_scores, done, sequences, lengths), None

  start = (jnp.zeros((batch, beam_size), jnp.int32), cache, jnp.zeros((batch, beam_size)),
           jnp.zeros((batch, beam_size), bool),
           jnp.zeros((batch, beam_size, max_decode_length), jnp.int32),
           jnp.zeros((batch, beam_size), jnp.int32))
  (_, _, scores, _, sequences, lengths), _ = jax.lax.scan(
      step, start, jnp.arange(max_decode_length))
  normalized = scores / _brevity_penalty(lengths.astype(jnp.float32), alpha)
  best = jnp.argmax(normalized, axis=1)
  pick = lambda x: jnp.take_along_axis(x, best[:, None, None], axis=1)[:, 0]
  return pick(sequences), jnp.take_along_axis(normalized, best[:, None], axis=1)[:, 0]


def _pad(tokens, length):
  out = np.zeros((length,), np.int32)
  tokens = np.asarray(tokens)[:length]
  out[:len(tokens)] = tokens
  return out


def render(vocabulary, ids) -> str:
  """Text of `ids` up to EOS, sentinels shown as `<extra_id_N>` (vocab.decode drops them)."""
  first_sentinel = vocabulary.vocab_size - 1
  pieces, run = [], []
  for token in (int(t) for t in ids):
    if token == vocabulary.eos_id:
      break
    if token <= 0:
      continue
    if vocabulary.extra_ids and token > first_sentinel - vocabulary.extra_ids:
      pieces += [vocabulary.decode(run), f'<extra_id_{first_sentinel - token}>']
      run = []
    else:
      run.append(token)
  return ''.join(pieces + [vocabulary.decode(run)])


def print_examples(model, variables, dataset, split: str, count: int,
                   max_decode_length: Optional[int] = None):
  """Greedy-decodes `count` examples of `split`, prints and returns (input, target, prediction)."""
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(dataset.name)
  vocab = task.output_features['targets'].vocabulary
  examples = list(dataset.eval_examples(split, count))
  if not examples:
    return []
  inputs = np.stack([_pad(e['inputs'], dataset.lengths['inputs']) for e in examples])
  length = max_decode_length or dataset.lengths['targets']
  predictions = np.asarray(greedy(model, variables, jnp.asarray(inputs), length))
  rows = []
  for example, prediction in zip(examples, predictions):
    row = tuple(render(vocab, tokens) for tokens in (
        example['inputs'], example['targets'], prediction))
    rows.append(row)
    print(f'input:      {row[0][:200]!r}\ntarget:     {row[1][:200]!r}\n'
          f'prediction: {row[2][:200]!r}\n', flush=True)
  return rows
