"""T5 building blocks with T5X parameter names and logical axes.

Kernels are stored as 2-D matrices `[prod(input dims), prod(output dims)]`, as T5X stores them,
so checkpoints convert with an identity map; they are reshaped to their full rank when used.
"""
import functools
from typing import Callable, Optional, Sequence, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]


def _as_tuple(x) -> tuple:
  return tuple(x) if isinstance(x, Sequence) else (x,)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def wide_output_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                            output_dtype) -> jax.Array:
  """`lax.dot_general` of narrow operands (bfloat16) into a wider `output_dtype` (float32).

  The gradient matmuls run in the operands' dtype, as every other matmul of a bfloat16 network
  does: the cotangent is rounded to it first. Plain autodiff would multiply the float32
  cotangent with the bfloat16 operands, which XLA runs as float32 (TF32) matmuls at a fraction
  of the speed. Reverse mode only (a custom VJP): `jax.jvp` through it fails.
  """
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, preferred_element_type=output_dtype)


def _wide_output_forward(lhs, rhs, dimension_numbers, output_dtype):
  out = jax.lax.dot_general(lhs, rhs, dimension_numbers, preferred_element_type=output_dtype)
  return out, (lhs, rhs)


def _wide_output_backward(dimension_numbers, output_dtype, residuals, grad):
  del output_dtype
  lhs, rhs = residuals
  grad = grad.astype(lhs.dtype)
  # Transposes of the linear maps, traced without the primal product (which the traced
  # program would otherwise show as a dead matmul: `benchmark/flops.py` counts it).
  (lhs_grad,) = jax.linear_transpose(
      lambda a: jax.lax.dot_general(a, rhs, dimension_numbers), lhs)(grad)
  (rhs_grad,) = jax.linear_transpose(
      lambda b: jax.lax.dot_general(lhs, b, dimension_numbers), rhs)(grad)
  return lhs_grad, rhs_grad


wide_output_dot_general.defvjp(_wide_output_forward, _wide_output_backward)


def _dot_general(lhs, rhs, dimension_numbers, output_dtype):
  """`lax.dot_general` of operands of one dtype into `output_dtype` (None: theirs) or a wider one.

  A wider output goes through `wide_output_dot_general`, so the gradient stays narrow.
  """
  if lhs.dtype != rhs.dtype:
    raise ValueError(f'matmul operands must share a dtype, got {lhs.dtype} and {rhs.dtype}.')
  if output_dtype is None or jnp.dtype(output_dtype) == lhs.dtype:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers)
  if jnp.promote_types(lhs.dtype, output_dtype) != jnp.dtype(output_dtype):
    raise ValueError(f'output dtype {jnp.dtype(output_dtype)} must be the operands\' '
                     f'({lhs.dtype}) or wider.')
  return wide_output_dot_general(lhs, rhs, dimension_numbers, jnp.dtype(output_dtype))


class DenseGeneral(nn.Module):
  """A bias-free linear map over one or more trailing axes.

  Attributes:
    features: output dims, e.g. `(heads, head_dim)` for a query projection.
    axis: input axes contracted, e.g. `(-2, -1)` for an output projection over `[heads, head_dim]`.
    kernel_axes: two logical axis names of the stored 2-D kernel, e.g. `('embed', 'joined_kv')`.
    dtype: computation dtype; the kernel is stored in float32.
    output_dtype: dtype of the result, accumulated in float32 (None: `dtype`). bfloat16 operands
      with a float32 output keep the matmul and its gradient matmuls on the bfloat16 units
      (`wide_output_dot_general`).
  """
  features: Union[int, Sequence[int]]
  kernel_axes: tuple[str, str]
  axis: Union[int, Sequence[int]] = -1
  dtype: jnp.dtype = jnp.float32
  output_dtype: Optional[jnp.dtype] = None
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
    return _dot_general(inputs.astype(self.dtype), kernel, (contract, ((), ())),
                        self.output_dtype)


default_embed_init = nn.initializers.variance_scaling(1.0, 'fan_in', 'normal', out_axis=0)


class Embed(nn.Module):
  """A token embedding table `[vocab, embed]` (T5X name `embedding`, axes `('vocab', 'embed')`).

  Attributes:
    num_embeddings: vocabulary size.
    features: embedding width.
    dtype: dtype of the looked-up vectors; the table is stored in float32.
    attend_dtype: operand dtype of `attend` (tied output logits); None means `dtype`. T5 uses
      float32 for the logits' numerical stability.
    attend_output_dtype: dtype of `attend`'s result, accumulated in float32 (None: the operands').
    embedding_init: initializer of the table.
  """
  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32
  attend_dtype: jnp.dtype | None = None
  attend_output_dtype: jnp.dtype | None = None
  embedding_init: Initializer = default_embed_init

  def setup(self):
    self.embedding = self.param(
        'embedding', nn.with_logical_partitioning(self.embedding_init, ('vocab', 'embed')),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Integer ids `[batch, length]` (any shape) -> vectors `[batch, length, features]`."""
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f'Embed takes integer token ids, got dtype {inputs.dtype}.')
    output = jnp.take(self.embedding.astype(self.dtype), inputs, axis=0)
    if output.ndim == 3:
      output = nn.with_logical_constraint(output, ('batch', 'length', 'embed'))
    return output

  def attend(self, query: jax.Array) -> jax.Array:
    """Tied logits: `[..., features]` x `[vocab, features]^T` -> `[..., vocab]`."""
    dtype = self.attend_dtype or self.dtype
    contract = (((query.ndim - 1,), (1,)), ((), ()))
    return _dot_general(query.astype(dtype), self.embedding.astype(dtype), contract,
                        self.attend_output_dtype)


class LayerNorm(nn.Module):
  """T5 layer norm: RMS normalization over the last axis, no centering and no bias.

  y = x / sqrt(mean(x^2) + epsilon) * scale, computed in float32 and cast to `dtype`.
  """
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[..., embed]` -> `[..., embed]`."""
    x = x.astype(jnp.float32)
    mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    y = (x * jax.lax.rsqrt(mean_square + self.epsilon)).astype(self.dtype)
    scale = self.param('scale', nn.with_logical_partitioning(self.scale_init, ('embed',)),
                       (x.shape[-1],), jnp.float32)
    return y * scale.astype(self.dtype)


def activation_function(name: str | Callable) -> Callable:
  """'linear' -> identity; any other string -> the `flax.linen` function of that name."""
  if callable(name):
    return name
  if name == 'linear':
    return lambda x: x
  fn = getattr(nn, name, None)
  if not callable(fn):
    raise ValueError(f'unknown MLP activation {name!r}: use "linear" or a flax.linen function '
                     f'name such as "gelu" or "relu" (gin `T5Config.mlp_activations`).')
  return fn


class MlpBlock(nn.Module):
  """T5 feed-forward block; ('gelu', 'linear') is T5 v1.1's gated GELU.

  h = prod_i act_i(x W_i) (kernels `wi_0`, `wi_1`, ...; a single activation names it `wi`),
  then dropout on h and `wo`. Kernels `('embed', 'mlp')` and `('mlp', 'embed')`.

  Attributes:
    intermediate_dim: the hidden width (T5 `d_ff`).
    activations: one activation per input projection; their outputs are multiplied.
    intermediate_dropout_rate: dropout on the hidden activations (broadcast over length).
    dtype: activation dtype.
  """
  intermediate_dim: int = 2048
  activations: Sequence[Union[str, Callable]] = ('gelu', 'linear')
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')
  intermediate_dropout_rate: float = 0.1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, deterministic: bool = True) -> jax.Array:
    """`[batch, length, embed]` -> `[batch, length, embed]`."""
    hidden = None
    for i, act in enumerate(self.activations):
      name = 'wi' if len(self.activations) == 1 else f'wi_{i}'
      h = DenseGeneral(self.intermediate_dim, kernel_axes=('embed', 'mlp'), dtype=self.dtype,
                       kernel_init=self.kernel_init, name=name)(inputs)
      h = activation_function(act)(h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic)
    hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
    return DenseGeneral(inputs.shape[-1], kernel_axes=('mlp', 'embed'), dtype=self.dtype,
                        kernel_init=self.kernel_init, name='wo')(hidden)


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool = True,
                             num_buckets: int = 32, max_distance: int = 128) -> np.ndarray:
  """T5's bucket of `relative_position = key_position - query_position` (int32 array).

  Half the buckets (all of them when not bidirectional) hold exact distances 0..max_exact-1;
  the rest grow logarithmically up to `max_distance`, beyond which distances share the last
  bucket. Bidirectional: keys after the query use buckets offset by num_buckets // 2.
  Unidirectional (causal decoder): keys after the query all fall in bucket 0.
  Computed in NumPy: lengths are static, so the buckets are program constants. The float32
  arithmetic is T5's (Mesh TF / T5X), so boundary distances land in the same buckets.
  """
  bucket = np.zeros_like(relative_position, dtype=np.int32)
  distance = -np.asarray(relative_position, np.int32)  # how far back the key is
  if bidirectional:
    num_buckets //= 2
    bucket += (distance < 0).astype(np.int32) * num_buckets
    distance = np.abs(distance)
  else:
    distance = np.maximum(distance, 0)
  max_exact = num_buckets // 2
  with np.errstate(divide='ignore'):
    log_ratio = (np.log(distance.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
                 / np.log(max_distance / max_exact))
  large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(np.int32)
  large = np.minimum(large, num_buckets - 1)
  return bucket + np.where(distance < max_exact, distance, large)


@flax.struct.dataclass
class RelativeBias:
  """The T5 relative-position bias as its table: `[1, heads, q, k]` on demand, or block by block.

  `dense()` is what `RelativePositionBiases` returns, computed once per stack and shared by its
  layers; blockwise attention reads `block()` for one block of query and key indices instead, and
  where no layer reads the dense form, XLA drops it: no `[heads, q, k]` tensor at long lengths.

  Attributes:
    table: `rel_embedding` `[heads, num_buckets]`.
    buckets: `[q_len + k_len - 1]` int32 bucket of each relative position k - q, at entry
      k - q + q_len - 1 (a NumPy constant: T5's float32 bucketing, exactly).
    values: the dense `[1, heads, q_len, k_len]` bias, or None (then `dense()` computes it).
    q_len, k_len: the lengths the bias covers.
    dtype: the dtype of the bias values.
  """
  table: jax.Array
  buckets: jax.Array
  values: Optional[jax.Array]
  q_len: int = flax.struct.field(pytree_node=False)
  k_len: int = flax.struct.field(pytree_node=False)
  dtype: jnp.dtype = flax.struct.field(pytree_node=False, default=jnp.float32)

  @property
  def shape(self) -> tuple[int, ...]:
    return (1, self.table.shape[0], self.q_len, self.k_len)

  def dense(self) -> jax.Array:
    """`[1, heads, q_len, k_len]`."""
    if self.values is not None:
      return self.values
    return self.block(self.table, self.buckets, np.arange(self.q_len)[:, None],
                      np.arange(self.k_len)[None, :], self.q_len, self.dtype)[None]

  @staticmethod
  def block(table: jax.Array, buckets: jax.Array, query_index, key_index, q_len: int,
            dtype=jnp.float32) -> jax.Array:
    """`[heads, q, k]` bias between the queries at `query_index` `[q, 1]` and the keys at
    `key_index` `[1, k]` (`buckets` and `q_len` as the attributes).

    A contraction with a one-hot `[buckets, q, k]` rather than a gather: the gather's gradient
    scatter-adds q*k values into num_buckets slots, which on GPU serialises on atomics and, in
    bf16, loses precision (see BENCHMARKS.md, the relative-position-bias fix). The matmul does
    neither.
    """
    bucket = jnp.asarray(buckets)[key_index - query_index + q_len - 1]  # [q, k]
    one_hot = bucket[None] == jnp.arange(table.shape[1])[:, None, None]
    return jax.lax.dot_general(table.astype(dtype), one_hot.astype(dtype),
                               (((1,), (0,)), ((), ())))


class RelativePositionBiases(nn.Module):
  """T5 relative position attention bias: one learned scalar per (head, distance bucket).

  Attributes:
    num_heads: attention heads; each has its own bias per bucket.
    num_buckets, max_distance: T5's bucketing (32 buckets, distances >= 128 share one).
    dtype: output dtype.
    embedding_init: initializer of `rel_embedding` `[heads, num_buckets]`.
  """
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  dtype: jnp.dtype = jnp.float32
  embedding_init: Initializer = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')

  def __call__(self, q_len: int, k_len: int, bidirectional: bool = True) -> jax.Array:
    """Bias `[1, heads, q_len, k_len]`; bidirectional for the encoder, causal for the decoder."""
    return self.table_bias(q_len, k_len, bidirectional).dense()

  @nn.compact
  def table_bias(self, q_len: int, k_len: int, bidirectional: bool = True) -> RelativeBias:
    """The same bias as its table (`RelativeBias`), for attention that reads it block by block."""
    relative_position = np.arange(-(q_len - 1), k_len)
    buckets = relative_position_bucket(relative_position, bidirectional, self.num_buckets,
                                       self.max_distance)
    table = self.param(
        'rel_embedding',
        nn.with_logical_partitioning(self.embedding_init, ('heads', 'relpos_buckets')),
        (self.num_heads, self.num_buckets), jnp.float32)
    bias = RelativeBias(table, jnp.asarray(buckets, jnp.int32), None, q_len, k_len, self.dtype)
    return bias.replace(values=bias.dense())
