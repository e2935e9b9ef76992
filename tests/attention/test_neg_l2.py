"""Negative squared-L2 attention: the distance itself, without a [q, k, head_dim] tensor."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.attention import helpers
from tests.attention import reference


def test_logits_equal_the_direct_distance_and_form_no_difference_tensor():
  module = helpers.build('neg_l2')
  x_q, x_kv = helpers.inputs(0, length=5), helpers.inputs(1, length=7)
  variables = helpers.init(module, x_q, x_kv)
  probs = module.apply(variables, x_q, x_kv, None, None, method='probabilities')
  want = reference.softmax(reference.neg_l2_logits(
      helpers.numpy_tree(variables['params']), np.asarray(x_q, np.float64),
      np.asarray(x_kv, np.float64), helpers.HEADS))
  np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)
  loss = lambda p: jnp.sum(module.apply({'params': p}, x_q, x_kv) ** 2)
  shapes = helpers.traced_shapes(jax.make_jaxpr(jax.grad(loss))(variables['params']))
  assert not any(len(s) == 5 and s[1:3] in ((5, 7), (7, 5)) for s in shapes)
  assert not any((5, 7, helpers.HEADS, helpers.HEAD_DIM) == s[1:] for s in shapes)


def test_the_nearest_key_wins_whatever_its_length():
  """Unlike q.k, a long key far from the query does not win the softmax."""
  module = helpers.build('neg_l2', num_heads=1, head_dim=helpers.EMBED)
  eye = jnp.eye(helpers.EMBED)
  params = {'query': {'kernel': eye}, 'key': {'kernel': eye},
            'value': {'kernel': eye}, 'out': {'kernel': eye}}
  query = jnp.zeros((1, 1, helpers.EMBED)).at[0, 0, 0].set(1.0)
  keys = jnp.zeros((1, 2, helpers.EMBED)).at[0, 0, 0].set(1.1).at[0, 1, 0].set(8.0)
  probs = module.apply({'params': params}, query, keys, None, None, method='probabilities')
  assert probs[0, 0, 0, 0] > 0.99
