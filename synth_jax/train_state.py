"""The train state, its sharded creation, and the loss: pure functions the loop composes."""
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax.attention import core


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes.

  params: trainable parameters ('params' collection).
  frozen: non-trainable variables (the 'frozen' collection: fixed random maps, orthogonal
    W_Q/W_K). They enter the forward pass as constants: no gradient, no optimizer state.
  """
  step: jax.Array
  params: Any
  frozen: Any
  opt_state: Any

  def variables(self):
    return {'params': self.params, **({core.FROZEN: self.frozen} if self.frozen else {})}


def model_inputs(batch):
  """The keyword arguments `Transformer.__call__` takes from a feature-converted batch."""
  names = ('encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
           'encoder_segment_ids', 'decoder_segment_ids', 'encoder_positions', 'decoder_positions')
  return {k: batch[k] for k in names if k in batch}


def _fits(sharding: NamedSharding, shape: tuple) -> bool:
  """Whether `sharding` partitions an array of `shape` evenly (same rank, divisible dims)."""
  if len(sharding.spec) != len(shape):
    return False
  for axes, size in zip(sharding.spec, shape):
    for axis in (axes,) if isinstance(axes, str) else (axes or ()):
      if size % sharding.mesh.shape[axis]:
        return False
  return True


def _state_sharding_for(abstract_opt_state, param_shardings, mesh: Mesh):
  """Optimizer-state leaves shaped and placed like a parameter get its sharding; others replicate.

  Moments that mirror a parameter (same path suffix and shape) follow it; factored row/column
  moments are small and replicated.
  """
  param_by_path = {}
  for path, sharding in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
    param_by_path[tuple(str(k) for k in path)] = sharding
  replicated = NamedSharding(mesh, PartitionSpec())

  def pick(path, leaf):
    keys = tuple(str(k) for k in path)
    for start in range(len(keys)):
      sharding = param_by_path.get(keys[start:])
      if sharding is not None and len(sharding.spec) <= len(leaf.shape):
        return sharding if _fits(sharding, leaf.shape) else replicated
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


def _abstract_and_shardings(init_variables: Callable, rng, mesh: Mesh):
  """The boxed abstract variables `init_variables(rng)` makes and their shardings on `mesh`."""
  abstract = jax.eval_shape(init_variables, rng)
  shardings = partitioning.logical_shardings(abstract, mesh)
  _check_divisible(nn.unbox(abstract), nn.unbox(shardings), nn.get_partition_spec(abstract))
  return abstract, shardings


def abstract_variables(model: nn.Module, example_batch, mesh: Mesh) -> dict:
  """`{'params', 'frozen'}` as `jax.ShapeDtypeStruct`s placed as `create` places them: what a
  checkpoint's variables are read into (`checkpoints.read_variables`) without building an
  optimizer or initialising anything."""
  inputs = jax.tree.map(lambda x: x[:1], model_inputs(example_batch))

  def init_variables(rng):
    return model.init({'params': rng, 'dropout': rng}, **inputs, enable_dropout=False)

  abstract, shardings = _abstract_and_shardings(init_variables, jax.random.key(0), mesh)
  abstract, shardings = nn.unbox(abstract), nn.unbox(shardings)
  return {collection: jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract[collection], shardings[collection])
          for collection in ('params', core.FROZEN) if collection in abstract}


def create(model: nn.Module, make_optimizer: Callable, example_batch, mesh: Mesh, rng):
  """A sharded `TrainState` and its shardings, parameters created in place on the mesh.

  make_optimizer: `factor_plan -> optax.GradientTransformation` (the plan comes from the
    parameters' logical axes).
  """
  # Parameter shapes do not depend on the batch: one row is enough to trace the forward pass that
  # creates them (XLA then drops its arithmetic; the initializers' random bits remain).
  inputs = jax.tree.map(lambda x: x[:1], model_inputs(example_batch))

  def init_variables(rng):
    return model.init({'params': rng, 'dropout': rng}, **inputs, enable_dropout=False)

  abstract, shardings = _abstract_and_shardings(init_variables, rng, mesh)
  variables = jax.jit(lambda r: nn.unbox(init_variables(r)), out_shardings=nn.unbox(shardings))(rng)
  optimizer = make_optimizer(optimizer_lib.factor_plan(abstract['params']))
  params = variables['params']
  frozen = variables.get(core.FROZEN, {})
  param_shardings = nn.unbox(shardings['params'])
  opt_shardings = _state_sharding_for(jax.eval_shape(optimizer.init, params), param_shardings,
                                      mesh)
  opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
  replicated = NamedSharding(mesh, PartitionSpec())
  state = TrainState(step=jax.device_put(jnp.array(0, jnp.int32), replicated), params=params,
                     frozen=frozen, opt_state=opt_state)
  state_shardings = TrainState(
      step=replicated, params=param_shardings,
      frozen=nn.unbox(shardings.get(core.FROZEN, {})), opt_state=opt_shardings)
  return state, state_shardings, optimizer


def _check_divisible(abstract, shardings, logical_specs):
  """Every sharded dimension splits evenly; otherwise name the parameter, axis and fix."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
  for (path, leaf), sharding, logical in zip(
      leaves, jax.tree.leaves(shardings), jax.tree.leaves(logical_specs, is_leaf=is_spec)):
    for dim, (size, mesh_axis) in enumerate(zip(leaf.shape, sharding.spec)):
      parts = sharding.mesh.shape[mesh_axis] if mesh_axis else 1
      if size % parts:
        raise ValueError(
            f'{jax.tree_util.keystr(path)} has {size} along logical axis {logical[dim]!r}, which '
            f'is split {parts} ways over mesh axis {mesh_axis!r}. Make it a multiple of {parts} '
            f'(T5 pads vocab_size to a multiple of 128, e.g. 32128) or lower model parallelism '
            f'(gin `train.model_parallelism`).')


def cross_entropy(logits, targets, weights, z_loss: float = 0.0, label_smoothing: float = 0.0):
  """T5X's loss: smoothed cross entropy plus z_loss * log(Z)^2, summed over weighted tokens.

  logits: `[batch, len, vocab]` float32; targets, weights: `[batch, len]`.
  Returns (loss sum, z-loss sum, weight sum, correct-token count).
  """
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  # The loss of a perfectly smoothed prediction, subtracted so the minimum stays 0.
  normalizer = -(confidence * np.log(confidence) + (vocab - 1) * low * np.log(low + 1e-20)) \
      if label_smoothing else 0.0
  soft_targets = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_probs = logits - log_z[..., None]
  token_loss = -jnp.sum(soft_targets * log_probs, axis=-1) - normalizer
  token_z_loss = z_loss * jnp.square(log_z)
  weights = weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return (jnp.sum((token_loss + token_z_loss) * weights), jnp.sum(token_z_loss * weights),
          jnp.sum(weights), jnp.sum(correct * weights))


def loss_weights(batch):
  if 'decoder_loss_weights' in batch:
    return batch['decoder_loss_weights']
  return batch['decoder_target_tokens'] > 0


def train_step(model: nn.Module, optimizer: optax.GradientTransformation, state: TrainState,
               batch, rng, z_loss: float = 1e-4, label_smoothing: float = 0.0):
  """One step: loss (mean over weighted target tokens), gradients w.r.t. params, update."""
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    variables = state.replace(params=params).variables()
    logits = model.apply(variables, **model_inputs(batch), enable_dropout=True,
                         rngs={'dropout': dropout_rng})
    total, z_total, weight, correct = cross_entropy(
        logits, batch['decoder_target_tokens'], loss_weights(batch), z_loss, label_smoothing)
    weight = jnp.maximum(weight, 1.0)
    return total / weight, (z_total / weight, correct / weight)

  (loss, (z, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'z_loss': z, 'accuracy': accuracy,
             'grad_norm': optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(model: nn.Module, state: TrainState, batch):
  """Sums for the eval metrics of one batch (no dropout)."""
  logits = model.apply(state.variables(), **model_inputs(batch), enable_dropout=False)
  total, _, weight, correct = cross_entropy(logits, batch['decoder_target_tokens'],
                                            loss_weights(batch))
  return {'loss_sum': total, 'weight_sum': weight, 'correct_sum': correct}
