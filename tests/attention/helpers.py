"""Shared fixtures for the attention tests: tiny shapes, inputs, init/apply wrappers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax import attention
from tests import fixtures

EMBED, HEADS, HEAD_DIM, MAX_LEN = 16, 2, 8, 8
MIXTURES = ('random+vanilla', 'dense+vanilla', 'random+dense', 'factorized_random+orthogonal',
            'cosine+random')
ALL_TYPES = tuple(attention.names()) + MIXTURES


def build(name, **overrides):
  options = dict(num_heads=HEADS, head_dim=HEAD_DIM, max_query_length=MAX_LEN,
                 max_key_length=MAX_LEN)
  options.update(overrides)
  return attention.build(name, **options)


def inputs(seed, batch=2, length=6, embed=EMBED):
  return jax.random.normal(jax.random.key(seed), (batch, length, embed), jnp.float32)


def init(module, x_q, x_kv=None, seed=0):
  """Unboxed variables of `module` for these input shapes."""
  x_kv = x_q if x_kv is None else x_kv
  return nn.unbox(module.init(jax.random.key(seed), x_q, x_kv))


def noise_variables(module, x_q, x_kv=None, seed=0):
  """Unboxed variables of `init`'s shapes, filled with noise (`fixtures.noise_like`): no
  initializer and no forward pass run op by op, as `init` runs them."""
  x_kv = x_q if x_kv is None else x_kv
  abstract = nn.unbox(jax.eval_shape(lambda: module.init(jax.random.key(seed), x_q, x_kv)))
  return fixtures.noise_like(abstract, np.random.default_rng(seed))


def random_bias(seed, q_len, k_len, heads=HEADS):
  return 0.5 * jax.random.normal(jax.random.key(seed), (1, heads, q_len, k_len), jnp.float32)


def numpy_tree(tree):
  return jax.tree.map(np.asarray, tree)


def leaf_paths(tree):
  return {'/'.join(str(k.key) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def optimizer_step(module, variables, x, optimizer):
  """One real training step on `sum(out**2)`: gradients w.r.t. 'params' only, as the trainer.

  Returns (new variables, optimizer state).
  """
  import optax  # pylint: disable=g-import-not-at-top
  mask = jnp.tril(jnp.ones((x.shape[1], x.shape[1])))[None, None]

  def loss(params):
    return jnp.sum(module.apply({**variables, 'params': params}, x, x, mask) ** 2)

  state = optimizer.init(variables['params'])
  grads = jax.grad(loss)(variables['params'])
  updates, state = optimizer.update(grads, state, variables['params'])
  return {**variables, 'params': optax.apply_updates(variables['params'], updates)}, state


def assert_frozen_untouched(module, variables, x, frozen_shapes):
  """A step leaves every frozen array bit-identical and keeps none in the optimizer state."""
  import optax  # pylint: disable=g-import-not-at-top
  optimizer = optax.adafactor(learning_rate=0.1)
  stepped, state = optimizer_step(module, variables, x, optimizer)
  for path, before in jax.tree_util.tree_flatten_with_path(variables['frozen'])[0]:
    after = stepped['frozen']
    for key in path:
      after = after[key.key]
    np.testing.assert_array_equal(np.asarray(after), np.asarray(before))
  # Trainable parameters did move.
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stepped['params'], variables['params'])
  assert all(jax.tree.leaves(moved))
  # The optimizer state has no leaf shaped like a frozen array, and no frozen path in 'params'.
  assert not leaf_paths(variables['frozen']) & leaf_paths(variables['params'])
  state_shapes = {tuple(np.shape(leaf)) for leaf in jax.tree.leaves(state)}
  for shape in frozen_shapes:
    assert shape not in state_shapes, f'optimizer state holds a {shape} array'


def all_equations(jaxpr) -> list:
  """Every equation of a (closed) jaxpr, sub-jaxprs included."""
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  equations = []
  for eqn in jaxpr.eqns:
    equations.append(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          equations += all_equations(sub)
  return equations


def traced_shapes(jaxpr) -> set:
  """The shapes of every value a (closed) jaxpr computes, sub-jaxprs included."""
  return {v.aval.shape for eqn in all_equations(jaxpr) for v in eqn.outvars}


def round_bf16(x):
  """`x` rounded to bfloat16, back as a float32 NumPy array."""
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
