"""T5 building blocks with T5X parameter names and logical axes.

Kernels are stored as 2-D matrices `[prod(input dims), prod(output dims)]`, as T5X stores them,
so checkpoints convert with an identity map; they are reshaped to their full rank when used.
"""
from typing import Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, Sequence) else (x,)


class DenseGeneral(nn.Module):
  """A bias-free linear map over one or more trailing axes.

  Attributes:
    features: output dims, e.g. `(heads, head_dim)` for a query projection.
    axis: input axes contracted, e.g. `(-2, -1)` for an output projection over `[heads, head_dim]`.
    kernel_axes: two logical axis names of the stored 2-D kernel, e.g. `('embed', 'joined_kv')`.
    dtype: computation dtype; the kernel is stored in float32.
  """
  features: Union[int, Sequence[int]]
  kernel_axes: tuple[str, str]
  axis: Union[int, Sequence[int]] = -1
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    features = _as_tuple(self.features)
    axis = tuple(a % inputs.ndim for a in _as_tuple(self.axis))
    in_shape = tuple(inputs.shape[a] for a in axis)
    kernel = self.param(
        'kernel',
        nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
        (int(np.prod(in_shape)), int(np.prod(features))),
        jnp.float32)
    kernel = jnp.reshape(kernel.astype(self.dtype), in_shape + features)
    contract = (axis, tuple(range(len(axis))))
    return jax.lax.dot_general(inputs.astype(self.dtype), kernel, (contract, ((), ())))
