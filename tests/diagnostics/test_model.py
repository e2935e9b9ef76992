"""The diagnostic LM: causal for every attention, position scheme and the short convolution."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.diagnostics import model

VOCAB, LENGTH, CUT = 24, 12, 7


def build(attention='vanilla', positions='relative', conv_kernel=0, fold_query_scale=False, **kw):
  config = model.ModelConfig(vocab_size=VOCAB, attention=attention, width=16, num_heads=2,
                             max_length=LENGTH, positions=positions, conv_kernel=conv_kernel,
                             fold_query_scale=fold_query_scale)
  lm = model.DecoderLM(config, **kw)
  tokens = jax.random.randint(jax.random.key(0), (2, LENGTH), 0, VOCAB)
  variables = nn.unbox(jax.jit(lm.init)(jax.random.key(1), tokens))
  return lm, variables, tokens


def future_changed(tokens):
  """The same tokens from position CUT on replaced by others."""
  return tokens.at[:, CUT:].set((tokens[:, CUT:] + 5) % VOCAB)


def assert_causal(lm, variables, tokens):
  apply = jax.jit(lm.apply)
  before, after = apply(variables, tokens), apply(variables, future_changed(tokens))
  np.testing.assert_allclose(before[:, :CUT], after[:, :CUT], rtol=1e-5, atol=1e-5)
  assert np.abs(before[:, CUT:] - after[:, CUT:]).max() > 1e-3  # the change is seen after CUT


@pytest.mark.parametrize('attention', ['vanilla', 'fixed_random', 'dense',
                                       'random+vanilla', 'linear'])
def test_perturbing_future_tokens_changes_no_earlier_logits(attention):
  assert_causal(*build(attention, conv_kernel=3))


@pytest.mark.parametrize('positions', model.POSITIONS)
def test_each_position_scheme_builds_runs_and_stays_causal(positions):
  lm, variables, tokens = build(positions=positions)
  params = variables['params']
  assert ('position_embedding' in params) == (positions == 'learned')
  assert ('relpos_bias' in params) == (positions == 'relative')
  assert_causal(lm, variables, tokens)


def test_short_convolution_is_a_causal_depthwise_filter():
  x = jax.random.normal(jax.random.key(2), (2, 9, 4))
  conv = model.ShortConvolution(kernel_size=3)
  variables = conv.init(jax.random.key(3), x)
  w = np.asarray(nn.unbox(variables)['params']['kernel'])
  expected = np.zeros(x.shape)
  for t in range(9):
    for i in range(3):
      if t - i >= 0:
        expected[:, t] += w[i] * np.asarray(x[:, t - i])
  np.testing.assert_allclose(conv.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


def test_captured_probabilities_are_causal_rows_summing_to_one():
  lm, variables, tokens = build('random+vanilla', positions='learned')
  maps = model.attention_probabilities(lm, variables, tokens)
  assert len(maps) == 2
  for p in maps:
    p = np.asarray(p)
    assert p.shape[-3:] == (2, LENGTH, LENGTH)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (p[..., np.triu_indices(LENGTH, 1)[0], np.triu_indices(LENGTH, 1)[1]] == 0).all()


def test_fast_execution_equals_the_reference_path():
  """The dispatch (random synthesizers' shared scores) is a run option, not a model change."""
  lm, variables, tokens = build('fixed_random', attention_execution='reference')
  fast = model.DecoderLM(lm.config, attention_execution='fast')
  np.testing.assert_allclose(lm.apply(variables, tokens), fast.apply(variables, tokens),
                             rtol=1e-4, atol=1e-4)


def test_inputs_longer_than_the_learned_table_or_synthesizer_map_name_the_knob():
  longer = jnp.ones((1, 2 * LENGTH), jnp.int32)
  lm, variables, _ = build(positions='learned')
  with pytest.raises(ValueError, match='max_length'):
    lm.apply(variables, longer)
  lm, variables, _ = build('random', positions='none')
  with pytest.raises(ValueError, match='max_query_length'):
    lm.apply(variables, longer)


def test_unknown_position_scheme_and_attention_are_clear_errors():
  with pytest.raises(ValueError, match='positions='):
    model.ModelConfig(vocab_size=8, positions='rope')
  with pytest.raises(ValueError, match='unknown attention type'):
    model.ModelConfig(vocab_size=8, attention='synth')


@pytest.mark.parametrize('fold', [False, True])
def test_the_query_scale_convention_reaches_the_attention(fold):
  lm, variables, _ = build(fold_query_scale=fold)
  attention = variables['params']['layers_0']['attention']
  ratio = float(jnp.std(attention['query']['kernel']) / jnp.std(attention['key']['kernel']))
  head_dim = 8
  np.testing.assert_allclose(ratio, head_dim ** -0.5 if fold else 1.0, rtol=0.35)


def test_logits_at_answer_positions_equal_the_full_logits_there():
  lm, variables, tokens = build(conv_kernel=3)
  positions = jnp.asarray([[11, 0, 5], [3, 4, 10]], jnp.int32)
  full = np.asarray(jax.jit(lm.apply)(variables, tokens))
  at = np.asarray(jax.jit(lm.apply)(variables, tokens, positions))
  assert at.shape == (2, 3, VOCAB)
  np.testing.assert_allclose(at, np.take_along_axis(full, np.asarray(positions)[:, :, None], 1),
                             rtol=1e-6, atol=1e-6)
