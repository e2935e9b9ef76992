"""Dense and factorized dense synthesizers."""
import jax
import numpy as np
import pytest

from synth_jax.attention import dense
from tests.attention import helpers
from tests.attention import reference


def test_dense_parameters_have_paper_shapes():
  module = helpers.build('dense', max_key_length=7)
  x = helpers.inputs(0, length=7)
  params = helpers.init(module, x)['params']
  assert params['dense_1']['kernel'].shape == (helpers.EMBED, helpers.HEADS * helpers.HEAD_DIM)
  assert params['dense_2'].shape == (helpers.HEADS, helpers.HEAD_DIM, 7)
  assert 'query' not in params and 'key' not in params


def test_dense_logits_of_a_token_do_not_depend_on_other_tokens():
  module = helpers.build('dense')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  probs = module.apply(variables, x, x, None, None, method='probabilities')
  other = module.apply(variables, x, x.at[:, 1:].set(7.0), None, None, method='probabilities')
  np.testing.assert_allclose(probs[:, :, 0], other[:, :, 0], rtol=1e-6)


@pytest.mark.parametrize('length, expected', [(512, 16), (114, 6), (64, 8), (7, 1)])
def test_default_factor_is_largest_divisor_not_above_sqrt(length, expected):
  assert dense.default_factor(length) == expected
  assert length % expected == 0


def test_factorized_dense_combines_tiled_a_with_repeated_b():
  module = helpers.build('factorized_dense', max_key_length=8, factor=2)
  x = helpers.inputs(0, length=8)
  variables = helpers.init(module, x)
  params = helpers.numpy_tree(variables['params'])
  assert params['factor_a']['kernel'].shape == (helpers.EMBED, helpers.HEADS * 2)
  assert params['factor_b']['kernel'].shape == (helpers.EMBED, helpers.HEADS * 4)
  probs = module.apply(variables, x, x, None, None, method='probabilities')
  want = reference.softmax(
      reference.factorized_dense_logits(params, np.asarray(x, np.float64), 8, helpers.HEADS))
  np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)


def test_factorized_dense_factor_that_does_not_divide_raises():
  module = helpers.build('factorized_dense', max_key_length=8, factor=3)
  x = helpers.inputs(0)
  with pytest.raises(ValueError, match=r'factor a=3 does not divide max_key_length=8'):
    module.init(jax.random.key(0), x, x)
