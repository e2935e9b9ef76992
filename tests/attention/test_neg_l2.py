"""Negative squared-L2 attention: the distance itself, without a [q, k, head_dim] tensor."""
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import masks
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


def test_the_query_key_form_in_bfloat16_keeps_the_key_norm_precise():
  """[q, 1, 1] . [k, c, c'] / sqrt(d) is the logits plus |q|^2 / (2 sqrt(d)), a per-query constant;
  in bfloat16 the norm column c + c' = -|k|^2 / 2 keeps float32's precision (c alone would not)."""
  module = helpers.build('neg_l2', dtype=jnp.bfloat16)
  x = 6.0 * helpers.inputs(0, length=7)
  variables = helpers.init(helpers.build('neg_l2'), x)
  mask = masks.Mask.everything_visible(x.shape[0], 7, 7)
  form = lambda m, x: m.query_key_form(x, m.key_features(x), mask)
  queries, keys, scale = module.apply(variables, form, x, method='in_compact_scope')
  d = helpers.HEAD_DIM
  assert queries.shape[-1] == keys.shape[-1] == d + 2 and scale == d ** -0.5
  q, k = (np.asarray(t, np.float64) for t in (queries, keys))
  np.testing.assert_array_equal(q[..., d:], 1.0)
  dot = lambda a, b: np.einsum('bqhd,bkhd->bhqk', a, b)
  # The logits the form stands for, from the same bfloat16 q and k, in float64.
  want = (dot(q[..., :d], k[..., :d]) - 0.5 * np.sum(k[..., :d] ** 2, -1).transpose(0, 2, 1)[
      :, :, None, :]) * scale
  split_error = np.abs(dot(q, k) * scale - want).max()
  high_only_error = np.abs(dot(q[..., :d + 1], k[..., :d + 1]) * scale - want).max()
  assert split_error < 1e-3 * np.abs(want).max()
  assert high_only_error > 10 * split_error
