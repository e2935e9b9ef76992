"""Adafactor (Shazeer & Stern 2018) whose second-moment factoring follows logical-axis rules.

optax's `adafactor` factors each parameter's two largest dims. T5X instead factors the dims its
rules name 'row' and 'column' (e.g. `embed` x `joined_kv`, `synth_query_length` x
`synth_key_length` of a per-head random map) and treats 'batch' dims (`heads`) as a stack of
independent matrices. This module reads those roles from `partitioning.axis_rules()` and runs the
factored estimate on exactly those dims; the rest of the update is optax's Adafactor chain
(update clipping, parameter-scale multiplication, the learning rate).
"""
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from synth_jax import partitioning


class FactoredDims(NamedTuple):
  """Which dims of one parameter carry the row / column factors (None: keep a full moment)."""
  row: Optional[int]
  column: Optional[int]


def factored_dims(axis_names: tuple, shape: tuple, min_dim_size: int = 128) -> FactoredDims:
  """The row/column dims of a parameter with logical `axis_names`, by the axis rules.

  A parameter is factored only when both a 'row' and a 'column' axis exist and both are at least
  `min_dim_size` long (small matrices keep the exact second moment, as in Adafactor).
  """
  rules = partitioning.axis_rules()
  unknown = [a for a in axis_names if a not in rules]
  if unknown:
    raise ValueError(f'logical axes {unknown} have no factor rule; add an AxisRule next to the '
                     'code that introduces them.')
  roles = [rules[a].factor for a in axis_names]
  if roles.count('row') != 1 or roles.count('column') < 1:
    return FactoredDims(None, None)
  row = roles.index('row')
  # With several 'column' dims (rare) factor over the largest.
  column = max((i for i, r in enumerate(roles) if r == 'column'), key=lambda i: shape[i])
  if shape[row] < min_dim_size or shape[column] < min_dim_size:
    return FactoredDims(None, None)
  return FactoredDims(row, column)


def factor_plan(boxed_params, min_dim_size: int = 128):
  """A pytree matching the (unboxed) params with a `FactoredDims` per leaf."""
  def plan(leaf):
    if isinstance(leaf, nn.Partitioned):
      return factored_dims(tuple(leaf.names), leaf.value.shape, min_dim_size)
    return FactoredDims(None, None)
  return jax.tree.map(plan, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class FactoredState(NamedTuple):
  count: jax.Array
  row: Any      # per leaf: mean of g^2 over the column dim (or a scalar placeholder)
  column: Any   # per leaf: mean of g^2 over the row dim (or a scalar placeholder)
  full: Any     # per leaf: the full second moment for unfactored leaves (or a placeholder)


def scale_by_factored_rms(plan, decay_rate: float = 0.8, epsilon: float = 1e-30,
                          decay_offset: int = 0) -> optax.GradientTransformation:
  """Divides updates by the root of the (factored) second-moment estimate.

  plan: pytree of `FactoredDims` matching the params. The decay at step t is 1 - t^-decay_rate.
  """
  is_dims = lambda x: isinstance(x, FactoredDims)
  placeholder = jnp.zeros((1,), jnp.float32)

  def init(params):
    def without(shape, dim):
      return tuple(s for i, s in enumerate(shape) if i != dim)
    def row(p, d):
      return placeholder if d.row is None else jnp.zeros(without(p.shape, d.column), jnp.float32)
    def column(p, d):
      return placeholder if d.row is None else jnp.zeros(without(p.shape, d.row), jnp.float32)
    def full(p, d):
      return jnp.zeros(p.shape, jnp.float32) if d.row is None else placeholder
    return FactoredState(
        count=jnp.zeros([], jnp.int32),
        row=jax.tree.map(row, params, plan, is_leaf=is_dims),
        column=jax.tree.map(column, params, plan, is_leaf=is_dims),
        full=jax.tree.map(full, params, plan, is_leaf=is_dims))

  def update(updates, state, params=None):
    del params
    count = state.count + 1
    step = (count + decay_offset).astype(jnp.float32)
    decay = 1.0 - step ** (-decay_rate)

    def one(g, d, row, column, full):
      g2 = jnp.square(g.astype(jnp.float32)) + epsilon
      if d.row is None:
        full = decay * full + (1 - decay) * g2
        return g * jax.lax.rsqrt(full), row, column, full
      row = decay * row + (1 - decay) * jnp.mean(g2, axis=d.column)
      column = decay * column + (1 - decay) * jnp.mean(g2, axis=d.row)
      # v[r, c] ~= row[r] * column[c] / mean_r(row); dims shift after each reduction.
      row_mean = jnp.mean(row, axis=d.row if d.row < d.column else d.row - 1, keepdims=True)
      row_factor = jnp.expand_dims(jax.lax.rsqrt(row / row_mean), d.column)
      column_factor = jnp.expand_dims(jax.lax.rsqrt(column), d.row)
      return g * row_factor * column_factor, row, column, full

    leaves, treedef = jax.tree.flatten(updates)
    dims = treedef.flatten_up_to(plan)
    rows = treedef.flatten_up_to(state.row)
    columns = treedef.flatten_up_to(state.column)
    fulls = treedef.flatten_up_to(state.full)
    results = [one(*args) for args in zip(leaves, dims, rows, columns, fulls)]
    unflatten = lambda i: treedef.unflatten([r[i] for r in results])
    return unflatten(0), FactoredState(count, unflatten(1), unflatten(2), unflatten(3))

  return optax.GradientTransformation(init, update)


def adafactor(learning_rate, plan, decay_rate: float = 0.8, clipping_threshold: float = 1.0,
              multiply_by_parameter_scale: bool = True,
              epsilon2: float = 1e-3) -> optax.GradientTransformation:
  """T5X-default Adafactor (no momentum) with rule-driven factoring."""
  parts = [scale_by_factored_rms(plan, decay_rate)]
  if clipping_threshold:
    parts.append(optax.clip_by_block_rms(clipping_threshold))
  parts.append(optax.scale_by_learning_rate(learning_rate))
  if multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms(epsilon2))
  return optax.chain(*parts)


@gin.configurable(module='synth_jax.optimizer')
def rsqrt_schedule(base_learning_rate: float = 1.0, warmup_steps: int = 10_000,
                   linear_warmup: bool = False):
  """T5's inverse-square-root schedule: base / sqrt(max(step, warmup_steps)).

  T5 holds the rate at base/sqrt(warmup) (0.01 for 10k steps) during warmup; `linear_warmup`
  ramps it up linearly from 0 instead.
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32) + 1.0
    rate = base_learning_rate * jax.lax.rsqrt(jnp.maximum(step, float(warmup_steps)))
    if linear_warmup:
      rate = rate * jnp.minimum(1.0, step / warmup_steps)
    return rate
  return schedule


@gin.configurable(module='synth_jax.optimizer')
def constant_schedule(value: float = 1e-3):
  """A fixed rate (T5 finetunes with Adafactor at a constant 1e-3)."""
  return lambda step: jnp.full((), value, jnp.float32)
