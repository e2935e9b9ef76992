"""Orthogonal frozen-QK attention: dot-product attention with frozen orthonormal W_Q, W_K.

Per head h, W_Q[:, h, :] and W_K[:, h, :] ([embed, head_dim]) have orthonormal columns
(W^T W = I), drawn once at init and never trained. A kernel whose *joined* [embed, heads*head_dim]
matrix is orthogonal is not enough: that is per-head orthonormal only when heads*head_dim <= embed,
so each head's block is drawn as its own QR factor. Logits are q.k / sqrt(head_dim), the scale
explicit because the projections cannot absorb it. Values and the output stay trainable.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from synth_jax.attention import core
from synth_jax.attention import dot_product


def per_head_orthonormal(key, shape, dtype=jnp.float32):
  """`[embed, heads, head_dim]` with each `[:, h, :]` slice having orthonormal columns."""
  embed, heads, head_dim = shape
  if head_dim > embed:
    raise ValueError(f'orthogonal attention needs head_dim <= embed for orthonormal columns, got '
                     f'head_dim={head_dim} > embed={embed}; lower `head_dim` or raise the width.')
  gaussian = jax.random.normal(key, (heads, embed, head_dim), jnp.float32)
  q, r = jnp.linalg.qr(gaussian)
  # Sign-fix so the factor is Haar-distributed rather than biased by QR's convention.
  q = q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[:, None, :]
  return jnp.transpose(q, (1, 0, 2)).astype(dtype)


class OrthogonalAttention(dot_product.QueryKeyAttention):
  """Frozen orthonormal `query`/`key` kernels `[embed, heads, head_dim]` ('frozen' collection)."""
  variant_name = 'orthogonal'

  def frozen_init(self, key, shape):
    """The frozen `[embed, heads, head_dim]` kernels' distribution."""
    return per_head_orthonormal(key, shape)

  def frozen_projection(self, name, inputs):
    shape = (inputs.shape[-1], self.num_heads, self.head_size(inputs.shape[-1]))
    init = nn.with_logical_partitioning(self.frozen_init, ('embed', 'heads', 'kv'))
    kernel = self.variable(core.FROZEN, name, lambda: init(self.make_rng('params'), shape)).value
    return jnp.einsum('ble,ehd->blhd', inputs.astype(self.dtype),
                      jax.lax.stop_gradient(kernel).astype(self.dtype))

  def key_features(self, inputs_kv):
    return self.frozen_projection('key', inputs_kv)

  def queries(self, inputs_q, mask):
    return self.frozen_projection('query', inputs_q)

  def logit_scale(self, head_dim):
    return head_dim ** -0.5
