"""The one capture path: maps of any network, traceable (jit, vmap), checked rows."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax.attention import capture
from synth_jax.diagnostics import model as model_lib


def tiny_lm(attention_type='vanilla'):
  return model_lib.DecoderLM(model_lib.ModelConfig(vocab_size=16, attention=attention_type,
                                                   width=8, num_layers=2, max_length=6))


@pytest.mark.parametrize('attention_type', ['vanilla', 'random+vanilla'])
def test_the_captured_maps_are_the_modules_softmax_of_each_layer(attention_type):
  lm = tiny_lm(attention_type)
  tokens = jnp.array([[3, 4, 5, 6, 7, 8]])
  variables = nn.unbox(lm.init(jax.random.key(0), tokens))
  captured = capture.capture(lm, variables, tokens)
  assert [c.path for c in captured] == [('layers_0', 'attention'), ('layers_1', 'attention')]
  for entry in captured:
    checked = capture.checked(entry)
    p = checked['probabilities']
    assert p.shape == (1, 2, 6, 6)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (p[0][:, np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0).all()  # causal
  # Traceable: under jit and per run under vmap, the same maps as eager.
  jitted = model_lib.attention_probabilities(lm, variables, tokens)
  for entry, p in zip(captured, jitted):
    np.testing.assert_allclose(p, entry.probabilities, rtol=1e-6, atol=1e-7)
  other = nn.unbox(lm.init(jax.random.key(1), tokens))
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), variables, other)
  grouped = model_lib.group_attention_probabilities(lm, stacked, jnp.stack([tokens, tokens]))
  alone = model_lib.attention_probabilities(lm, other, tokens)
  np.testing.assert_allclose(grouped[1][1], alone[1], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grouped[1][0], jitted[1], rtol=1e-5, atol=1e-7)


def test_rows_that_do_not_sum_to_one_are_refused():
  mask = attention.Mask.for_self_attention(jnp.ones((1, 3)), causal=True)
  broken = capture.Captured(('layers_0', 'attention'), jnp.full((1, 1, 3, 3), 0.5), mask)
  with pytest.raises(RuntimeError, match='layers_0/attention: attention rows do not sum to 1'):
    capture.checked(broken)
