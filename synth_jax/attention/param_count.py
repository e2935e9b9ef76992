"""Parameter counts per attention type, from shapes alone (nothing is allocated).

`python -m synth_jax.attention.param_count` prints the table for one T5-base attention layer
(d_model 768, 12 heads, head_dim 64, max_length 512).
"""
import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax.attention import core
from synth_jax.attention import registry

DEFAULT_TYPES = tuple(registry.names()) + ('random+vanilla', 'dense+vanilla', 'random+dense')


def count_parameters(attention_type: str, embed: int = 768, num_heads: int = 12,
                     head_dim: int = 64, max_length: int = 512) -> dict[str, int]:
  """`{'trainable': n, 'frozen': m}` for one self-attention layer of `attention_type`."""
  module = registry.build(attention_type, num_heads=num_heads, head_dim=head_dim,
                          max_query_length=max_length, max_key_length=max_length)
  x = jax.ShapeDtypeStruct((1, max_length, embed), jnp.float32)
  shapes = jax.eval_shape(lambda x: nn.unbox(module.init(jax.random.key(0), x, x)), x)
  size = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  return {'trainable': size(shapes.get('params', {})), 'frozen': size(shapes.get(core.FROZEN, {}))}


def table(types=DEFAULT_TYPES, **shape) -> str:
  rows = [f'{"attention type":<28}{"trainable":>14}{"frozen":>14}']
  for name in types:
    counts = count_parameters(name, **shape)
    rows.append(f'{name:<28}{counts["trainable"]:>14,}{counts["frozen"]:>14,}')
  return '\n'.join(rows)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--embed', type=int, default=768)
  parser.add_argument('--num_heads', type=int, default=12)
  parser.add_argument('--head_dim', type=int, default=64)
  parser.add_argument('--max_length', type=int, default=512)
  parser.add_argument('types', nargs='*', default=list(DEFAULT_TYPES))
  args = parser.parse_args(argv)
  print(f'Parameters per attention layer (embed {args.embed}, {args.num_heads} heads x '
        f'{args.head_dim}, max length {args.max_length}):')
  print(table(args.types, embed=args.embed, num_heads=args.num_heads, head_dim=args.head_dim,
              max_length=args.max_length))


if __name__ == '__main__':
  main()
