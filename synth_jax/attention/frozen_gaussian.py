"""Frozen Gaussian QK attention: the control for orthogonal frozen-QK attention.

W_Q, W_K are i.i.d. N(0, 1/embed), drawn once and frozen like orthogonal attention's, with the same
explicit 1/sqrt(head_dim) logit scale. A column of an orthonormal W has norm 1; a Gaussian column
of `embed` entries of variance 1/embed has expected squared norm 1, so the two differ only in
orthogonality: whatever orthogonal attention does that this one does not comes from W^T W = I,
not from freezing.
"""
import jax
import jax.numpy as jnp

from synth_jax.attention import orthogonal


class FrozenGaussianAttention(orthogonal.OrthogonalAttention):
  """Frozen Gaussian `query`/`key` kernels `[embed, heads, head_dim]` in the 'frozen' collection."""
  variant_name = 'frozen_gaussian'

  def frozen_init(self, key, shape):
    return jax.random.normal(key, shape, jnp.float32) * shape[0] ** -0.5
