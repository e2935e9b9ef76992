"""Rotary position embeddings (RoPE, Su et al. 2021, eq. 34) on dot-product attention.

Each pair of query/key dimensions (i, i + head_dim/2) is rotated by the angle p * theta_i, with p
the token's position and theta_i = base^(-2i / head_dim); then logits = q_rot . k_rot depend on
positions only through p_q - p_k. Positions are within the segment on packed rows and the decode
index while decoding, so a packed or decoded example sees what it would see alone. Keys are
cached unrotated and rotated at their positions when read. No table has a maximum length, and
the T5 relative-position bias is off for this location (`position_bias = False`): rotation is
its position signal.
"""
import jax.numpy as jnp

from synth_jax.attention import dot_product
from synth_jax.attention import positions


def rotate(x, position, base: float):
  """`x` `[batch, len, heads, head_dim]` rotated at `position` `[batch | 1, len]`, float32."""
  half = x.shape[-1] // 2
  inverse_frequency = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = position.astype(jnp.float32)[..., None, None] * inverse_frequency  # [b, l, 1, half]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x = x.astype(jnp.float32)
  first, second = x[..., :half], x[..., half:]
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


class RotaryAttention(dot_product.DotProductAttention):
  """Vanilla's `query`/`key` kernels, rotated by position. Attributes: base (10000, RoPE's)."""
  base: float = 10000.0

  variant_name = 'rotary'
  position_bias = False

  def queries(self, inputs_q, mask):
    q = super().queries(inputs_q, mask)
    if q.shape[-1] % 2:
      raise ValueError(f'rotary attention rotates pairs of dimensions: head_dim={q.shape[-1]} '
                       'must be even (gin `T5Config.head_dim`).')
    return rotate(q, positions.query_index(mask, q.shape[1]), self.base).astype(self.dtype)

  def keys(self, key_features, mask):
    index = positions.key_index(mask, key_features.shape[1])
    return rotate(key_features, index, self.base).astype(self.dtype)
