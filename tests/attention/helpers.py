"""Shared fixtures for the attention tests: tiny shapes, inputs, init/apply wrappers."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax import attention

EMBED, HEADS, HEAD_DIM, MAX_LEN = 16, 2, 8, 8
MIXTURES = ('random+vanilla', 'dense+vanilla', 'random+dense', 'factorized_random+orthogonal')
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


def random_bias(seed, q_len, k_len, heads=HEADS):
  return 0.5 * jax.random.normal(jax.random.key(seed), (1, heads, q_len, k_len), jnp.float32)


def numpy_tree(tree):
  return jax.tree.map(np.asarray, tree)


def leaf_paths(tree):
  return {'/'.join(str(k.key) for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}
