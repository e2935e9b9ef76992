"""Top-k attention: each query keeps its k strongest visible keys, ties to the lower index."""
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import masks
from synth_jax.attention.kernels import selection
from tests.attention import helpers
from tests.attention import reference


@pytest.fixture(params=['platform', 'selection passes', 'chunks'])
def top_k_as_on_gpu(request, monkeypatch):
  """Each test with this platform's top-k, the selection passes and the chunked passes NVIDIA
  GPUs run (chunks of 2: rows here are short)."""
  if request.param == 'selection passes':
    monkeypatch.setattr(selection, 'top_k', selection.by_selection)
  if request.param == 'chunks':
    monkeypatch.setattr(selection, 'top_k', lambda v, k: selection.by_chunks(v, k, chunk=2))


@pytest.mark.parametrize('top_k', [1, 2, 4])
def test_probabilities_equal_the_numpy_top_k_reference_with_padding(top_k, top_k_as_on_gpu):
  module = helpers.build('topk', top_k=top_k)
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  mask = masks.Mask.for_self_attention(jnp.array([[1] * 6, [1] * 4 + [0] * 2]))
  probs = module.apply(variables, x, x, mask, None, method='probabilities')
  with np.errstate(invalid='ignore'):  # padding queries see no key: NaN rows, not compared
    want = reference.member_probabilities(
        'topk', helpers.numpy_tree(variables['params']), {}, np.asarray(x, np.float64),
        np.asarray(x, np.float64), helpers.HEADS, np.asarray(mask.dense()), None, top_k=top_k)
  valid = np.asarray(mask.query_valid)
  got, want = np.swapaxes(np.asarray(probs), 1, 2)[valid], np.swapaxes(want, 1, 2)[valid]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert np.all(np.sum(got > 0, axis=-1) == top_k)


def test_ties_go_to_the_lower_key_index(top_k_as_on_gpu):
  module = helpers.build('topk', top_k=2, num_heads=1, head_dim=helpers.EMBED)
  eye = jnp.eye(helpers.EMBED)
  params = {'query': {'kernel': eye}, 'key': {'kernel': eye},
            'value': {'kernel': eye}, 'out': {'kernel': eye}}
  query = jnp.ones((1, 1, helpers.EMBED))
  keys = jnp.ones((1, 5, helpers.EMBED))  # five equal scores
  probs = module.apply({'params': params}, query, keys, None, None, method='probabilities')
  np.testing.assert_allclose(probs[0, 0, 0], [0.5, 0.5, 0, 0, 0])


def test_top_k_below_one_is_a_clear_error():
  module = helpers.build('topk', top_k=0)
  x = helpers.inputs(0)
  with pytest.raises(ValueError, match=r"top_k=0 must be >= 1"):
    module.init(__import__('jax').random.key(0), x, x)
