"""Registry: names, mixtures, errors, and every variant against its NumPy reference."""
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax.attention import core
from synth_jax.attention import masks
from synth_jax.attention import mixture
from synth_jax.attention import registry
from tests.attention import helpers
from tests.attention import reference
from tests.attention.helpers import ALL_TYPES


def test_names_list_every_variant():
  assert attention.names() == sorted([
      'vanilla', 'dense', 'factorized_dense', 'random', 'fixed_random', 'factorized_random',
      'orthogonal', 'frozen_gaussian', 'cosine', 'neg_l2', 'hyperbolic', 'rotary', 'topk',
      'linear'])


def test_unknown_type_error_lists_the_valid_ones():
  with pytest.raises(ValueError) as error:
    attention.build('randon', num_heads=2)
  message = str(error.value)
  assert "'randon'" in message
  for name in attention.names():
    assert name in message
  assert 'random+vanilla' in message


def test_unknown_member_of_a_mixture_is_reported():
  with pytest.raises(ValueError, match=r"unknown attention type 'sparse' in 'random\+sparse'"):
    attention.build('random+sparse')


def test_mixture_member_named_twice_is_rejected():
  with pytest.raises(ValueError, match='twice'):
    attention.build('random+random')


def test_plus_joined_names_build_a_mixture_of_those_members():
  module = attention.build('random + dense', num_heads=2)
  assert isinstance(module, mixture.MixtureAttention)
  assert module.members == ('random', 'dense')


def test_position_dependence_flags_random_synthesizers_and_their_mixtures():
  assert attention.is_position_dependent('random')
  assert attention.is_position_dependent('fixed_random')
  assert attention.is_position_dependent('factorized_random')
  assert attention.is_position_dependent('dense+random')
  for name in ('vanilla', 'dense', 'factorized_dense', 'orthogonal', 'dense+vanilla'):
    assert not attention.is_position_dependent(name)


def test_every_logical_axis_of_every_parameter_has_a_rule():
  rules = registry.axis_rules()
  for name in ALL_TYPES:
    module = helpers.build(name)
    x = helpers.inputs(0)
    import flax.linen as nn
    import jax
    boxed = module.init(jax.random.key(0), x, x)
    for collection in boxed.values():
      for spec in jax.tree.leaves(nn.get_partition_spec(collection),
                                  is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)):
        assert len(spec) > 0, name
        for axis in spec:
          assert axis in rules, f'{name}: axis {axis!r} has no partitioning/factor rule'
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert all(isinstance(v, nn.Partitioned) for v in leaves), name
  assert {r.factor for r in rules.values()} <= {'row', 'column', 'batch', 'none'}


@pytest.mark.parametrize('name', ALL_TYPES)
@pytest.mark.parametrize('shape', ['self', 'cross'])
def test_output_matches_numpy_reference_of_the_paper_equation(name, shape):
  q_len, k_len = (6, 6) if shape == 'self' else (5, 7)
  module = helpers.build(name)
  x_q = helpers.inputs(0, length=q_len)
  x_kv = helpers.inputs(1, length=k_len)
  variables = helpers.init(module, x_q, x_kv)
  valid_keys = jnp.array([[1] * k_len, [1] * (k_len - 2) + [0, 0]])
  mask = masks.make_attention_mask(jnp.ones((2, q_len)), valid_keys)
  bias = helpers.random_bias(2, q_len, k_len)
  got = module.apply(variables, x_q, x_kv, mask, bias)
  want = reference.attention(name, helpers.numpy_tree(variables), x_q, x_kv, helpers.HEADS,
                             np.asarray(mask), np.asarray(bias))
  assert got.shape == (2, q_len, helpers.EMBED)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
