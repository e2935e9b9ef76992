"""XLA's temporary memory of hyperbolic attention's blockwise value-and-gradient, with its ball
features made once per token outside the blocks (the form of 39d6b7a..e7cc5e1: the blockwise
path then keeps the float32 features for its backward pass) against made per block from the
bf16 projections (`hyperbolic.block_logits`, the present form), and vanilla's blockwise q.k as
the floor. One attention layer, T5-base heads (12 x 64), blocks of 512:

  JAX_PLATFORMS=cpu python benchmarks/hyperbolic/residual_memory.py [BATCH LENGTH]

Prints MiB per form and the largest gradient difference between the two hyperbolic forms
(relative to the largest entry of each gradient).
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import hyperbolic
from synth_jax.attention import masks
from synth_jax.attention import scores
from synth_jax.attention.kernels import blockwise


def features_outside(q, k, c, t):
  return scores.Scores(hyperbolic.negative_distance, 1.0 / (jnp.sqrt(c) * t),
                       hyperbolic.ball_query_features(q.astype(jnp.float32), c),
                       hyperbolic.ball_key_features(k.astype(jnp.float32), c))


def features_per_block(q, k, c, t):
  return scores.Scores(hyperbolic.block_logits, (1.0 / (jnp.sqrt(c) * t), c), q, k)


def vanilla(q, k, c, t):
  del c, t
  return scores.query_key(q, k, q.shape[-1] ** -0.5)


def main(batch: int = 4, length: int = 1024, heads: int = 12, head_dim: int = 64):
  q, k, v = (jax.random.normal(jax.random.key(i), (batch, length, heads, head_dim),
                               jnp.bfloat16) for i in range(3))
  c, t = jnp.full((heads,), 0.7), jnp.full((heads,), 1.3)
  valid = jnp.ones((batch, length), bool)
  mask = masks.Mask(query_valid=valid, key_valid=valid)
  grads = {}
  for name, form in (('features outside', features_outside),
                     ('features per block', features_per_block), ('vanilla q.k', vanilla)):
    def loss(q, k, v, c, t, form=form):
      out = blockwise.blockwise_attention(form(q, k, c, t), v, mask, 512)
      return jnp.sum(out.astype(jnp.float32) ** 2)
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    memory = step.lower(q, k, v, c, t).compile().memory_analysis()
    print(f'{name:20s} temporary {memory.temp_size_in_bytes / 2**20:8.1f} MiB')
    grads[name] = step(q, k, v, c, t)[1]
  difference = max(float(np.max(np.abs(np.float32(a) - np.float32(b))) / np.max(np.abs(a)))
                   for a, b in zip(grads['features outside'], grads['features per block']))
  print(f'largest gradient difference between the hyperbolic forms, relative to the largest '
        f'gradient entry: {difference:.3g}')


if __name__ == '__main__':
  main(*map(int, sys.argv[1:3]))
