"""Greedy and beam search on the decode cache."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import decoding
from tests import fixtures

LENGTH = 8


def setup(attention_type):
  model = fixtures.tiny_model(attention_type, max_length=LENGTH)
  rng = np.random.default_rng(0)
  inputs = jnp.asarray(rng.integers(3, 300, size=(3, LENGTH)), jnp.int32).at[0, -2:].set(0)
  variables = model.init(jax.random.key(0), inputs, inputs, inputs, enable_dropout=False)
  return model, jax.tree.map(lambda x: x, dict(variables)), inputs


@pytest.mark.parametrize('attention_type', ['vanilla', 'random+dense'])
def test_greedy_equals_argmax_of_the_full_forward_pass(attention_type):
  model, variables, inputs = setup(attention_type)
  tokens = decoding.greedy(model, variables, inputs, LENGTH, eos_id=-1)  # no early stop
  shifted = jnp.concatenate([jnp.zeros((3, 1), jnp.int32), tokens[:, :-1]], axis=1)
  logits = model.apply(variables, inputs, shifted, jnp.ones_like(tokens), enable_dropout=False)
  np.testing.assert_array_equal(tokens, jnp.argmax(logits, axis=-1))
  assert len(np.unique(np.asarray(tokens))) > 1


def test_greedy_pads_after_eos():
  model, variables, inputs = setup('vanilla')
  free = np.asarray(decoding.greedy(model, variables, inputs, LENGTH, eos_id=-1))
  eos = int(free[0, 2])  # pretend the third token of example 0 is EOS
  stopped = np.asarray(decoding.greedy(model, variables, inputs, LENGTH, eos_id=eos))
  first = int(np.argmax(free[0] == eos))
  np.testing.assert_array_equal(stopped[0, :first + 1], free[0, :first + 1])
  assert np.all(stopped[0, first + 1:] == 0)


@pytest.mark.parametrize('attention_type', ['vanilla', 'random'])
def test_beam_search_with_one_beam_equals_greedy(attention_type):
  model, variables, inputs = setup(attention_type)
  greedy = decoding.greedy(model, variables, inputs, LENGTH, eos_id=-1)
  beam, _ = decoding.beam_search(model, variables, inputs, LENGTH, beam_size=1, eos_id=-1)
  np.testing.assert_array_equal(beam, greedy)


def test_wider_beam_finds_a_sequence_at_least_as_likely_as_greedy():
  model, variables, inputs = setup('vanilla')

  def log_likelihood(tokens):
    shifted = jnp.concatenate([jnp.zeros((3, 1), jnp.int32), tokens[:, :-1]], axis=1)
    logits = model.apply(variables, inputs, shifted, jnp.ones_like(tokens), enable_dropout=False)
    log_probs = jax.nn.log_softmax(logits)
    return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0].sum(-1)

  greedy = decoding.greedy(model, variables, inputs, LENGTH, eos_id=-1)
  beam, scores = decoding.beam_search(model, variables, inputs, LENGTH, beam_size=4, eos_id=-1,
                                      alpha=0.0)
  np.testing.assert_allclose(scores, log_likelihood(beam), rtol=1e-4, atol=1e-4)
  assert np.all(np.asarray(log_likelihood(beam)) >= np.asarray(log_likelihood(greedy)) - 1e-4)


def test_render_shows_sentinels_and_stops_at_eos():
  import seqio  # pylint: disable=g-import-not-at-top
  vocab = seqio.ByteVocabulary(extra_ids=100)
  hi = [ord('H') + 3, ord('i') + 3]  # ByteVocabulary shifts bytes by its 3 special ids
  ids = hi + [358] + hi + [357, 1, 42]
  assert decoding.render(vocab, ids) == 'Hi<extra_id_0>Hi<extra_id_1>'
  assert decoding.render(vocab, [0] + hi + [0]) == 'Hi'
