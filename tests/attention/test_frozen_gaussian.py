"""Frozen Gaussian QK attention, orthogonal attention's control."""
import jax
import numpy as np

from synth_jax.attention import core
from tests.attention import helpers


def test_kernels_are_gaussian_with_unit_expected_column_norm_and_not_orthonormal():
  embed, heads, head_dim = 256, 4, 8
  module = helpers.build('frozen_gaussian', num_heads=heads, head_dim=head_dim)
  frozen = helpers.init(module, helpers.inputs(0, embed=embed))[core.FROZEN]
  for name in ('query', 'key'):
    kernel = np.asarray(frozen[name], np.float64)
    assert kernel.shape == (embed, heads, head_dim)
    np.testing.assert_allclose(kernel.std(), embed ** -0.5, rtol=0.05)
    norms_sq = np.sum(kernel ** 2, axis=0)  # [heads, head_dim], each ~ chi2(embed) / embed
    np.testing.assert_allclose(norms_sq.mean(), 1.0, atol=0.05)
    gram = np.einsum('ehd,ehf->hdf', kernel, kernel)
    off_diagonal = gram - np.eye(head_dim) * np.diagonal(gram, axis1=1, axis2=2)[:, :, None]
    assert np.abs(off_diagonal).max() > 0.05  # random columns are not orthogonal
  assert not np.allclose(frozen['query'], frozen['key'])


def test_only_value_and_out_train_and_the_frozen_kernels_never_change():
  module = helpers.build('frozen_gaussian', head_dim=4)
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  assert set(variables['params']) == {'value', 'out'}
  assert set(variables[core.FROZEN]) == {'query', 'key'}
  helpers.assert_frozen_untouched(module, variables, x,
                                  frozen_shapes=[(helpers.EMBED, helpers.HEADS, 4)])


def test_logits_use_the_explicit_inverse_sqrt_head_dim_scale():
  module = helpers.build('frozen_gaussian')
  x = helpers.inputs(1)
  variables = helpers.init(module, x)
  probs = module.apply(variables, x, x, None, None, method='probabilities')
  wq, wk = (np.asarray(variables[core.FROZEN][n], np.float64) for n in ('query', 'key'))
  q = np.einsum('ble,ehd->blhd', np.asarray(x, np.float64), wq)
  k = np.einsum('ble,ehd->blhd', np.asarray(x, np.float64), wk)
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(helpers.HEAD_DIM)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits, axis=-1), rtol=1e-4, atol=1e-6)
