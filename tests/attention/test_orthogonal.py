"""Orthogonal frozen-QK attention."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import core
from synth_jax.attention import orthogonal
from tests.attention import helpers


def test_each_head_has_exactly_orthonormal_columns():
  module = helpers.build('orthogonal', num_heads=4, head_dim=8)
  x = helpers.inputs(0)  # embed 16: 4 heads x 8 = 32 > 16, so only a per-head draw works
  frozen = helpers.init(module, x)[core.FROZEN]
  for name in ('query', 'key'):
    kernel = np.asarray(frozen[name], np.float64)
    assert kernel.shape == (helpers.EMBED, 4, 8)
    for h in range(4):
      np.testing.assert_allclose(kernel[:, h].T @ kernel[:, h], np.eye(8), atol=1e-5)
  assert not np.allclose(frozen['query'], frozen['key'])


def test_joined_orthogonal_init_is_not_per_head_orthonormal():
  # Why the module draws per head: jax's orthogonal init on the joined [embed, heads*dim]
  # kernel has orthonormal rows, not per-head orthonormal columns, when heads*dim > embed.
  joined = jax.nn.initializers.orthogonal()(jax.random.key(0), (16, 32)).reshape(16, 4, 8)
  gram = np.einsum('ed,ef->df', joined[:, 0], joined[:, 0])
  assert not np.allclose(gram, np.eye(8), atol=1e-3)


def test_head_dim_above_embed_cannot_be_orthonormal():
  with pytest.raises(ValueError, match='head_dim <= embed'):
    orthogonal.per_head_orthonormal(jax.random.key(0), (4, 2, 8))


def test_query_and_key_are_frozen_and_value_out_trainable():
  module = helpers.build('orthogonal')
  variables = helpers.init(module, helpers.inputs(0))
  assert set(variables['params']) == {'value', 'out'}
  assert set(variables[core.FROZEN]) == {'query', 'key'}


def test_frozen_qk_bit_identical_after_an_optimizer_step_and_no_optimizer_state():
  module = helpers.build('orthogonal', head_dim=4)  # frozen shape [16, 2, 4] is unique
  x = helpers.inputs(0)
  helpers.assert_frozen_untouched(module, helpers.init(module, x), x,
                                  frozen_shapes=[(helpers.EMBED, helpers.HEADS, 4)])


def test_logits_use_an_explicit_inverse_sqrt_head_dim_scale():
  module = helpers.build('orthogonal')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  probs = module.apply(variables, x, x, None, None, method='probabilities')
  wq, wk = variables[core.FROZEN]['query'], variables[core.FROZEN]['key']
  q, k = jnp.einsum('ble,ehd->blhd', x, wq), jnp.einsum('ble,ehd->blhd', x, wk)
  want = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(helpers.HEAD_DIM))
  np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-6)
