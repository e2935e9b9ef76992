"""Registry: names, facts, mixtures, errors, the import graph, and every variant against its
NumPy reference."""
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax.attention import core
from synth_jax.attention import masks
from synth_jax.attention import mixture
from synth_jax.attention import registry
from synth_jax.diagnostics import claims
from tests import import_graph
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


# name -> (family, position_dependent, uses_position_bias)
EXPECTED_FACTS = {
    'vanilla': ('query_key', False, True),
    'dense': ('synthesizer', False, True),
    'factorized_dense': ('synthesizer', False, True),
    'random': ('synthesizer', True, True),
    'fixed_random': ('synthesizer', True, True),
    'factorized_random': ('synthesizer', True, True),
    'orthogonal': ('query_key', False, True),
    'frozen_gaussian': ('query_key', False, True),
    'cosine': ('query_key', False, True),
    'neg_l2': ('query_key', False, True),
    'hyperbolic': ('query_key', False, True),
    'rotary': ('query_key', False, False),
    'topk': ('query_key', False, True),
    'linear': ('kernel', False, False),
}


def test_facts_of_every_variant_name_its_family_position_dependence_and_bias():
  assert sorted(EXPECTED_FACTS) == attention.names()
  for name, (family, position_dependent, bias) in EXPECTED_FACTS.items():
    assert attention.facts(name) == attention.Facts(
        name=name, members=(name,), family=family, member_families=(family,),
        position_dependent=position_dependent, uses_position_bias=bias)
    assert not attention.facts(name).is_mixture
  assert {f for f, _, _ in EXPECTED_FACTS.values()} | {'mixture'} == set(registry.FAMILIES)


def test_facts_of_a_mixture_name_its_members_and_combine_theirs():
  facts = attention.facts('random + vanilla')
  assert facts == attention.Facts(
      name='random+vanilla', members=('random', 'vanilla'), family='mixture',
      member_families=('synthesizer', 'query_key'), position_dependent=True,
      uses_position_bias=True)
  assert facts.is_mixture
  three = attention.facts('dense+linear+cosine')
  assert three.members == ('dense', 'linear', 'cosine')
  assert three.member_families == ('synthesizer', 'kernel', 'query_key')
  assert not three.position_dependent
  # The bias is added when any member takes it; a mixture of bias-free members has none.
  assert attention.facts('rotary+vanilla').uses_position_bias
  assert not attention.facts('rotary+linear').uses_position_bias


@pytest.mark.parametrize('name', ALL_TYPES)
def test_the_older_questions_answer_from_the_facts(name):
  facts = attention.facts(name)
  assert registry.members(name) == facts.members
  assert attention.is_position_dependent(name) == facts.position_dependent
  assert attention.uses_position_bias(name) == facts.uses_position_bias


def test_the_diagnostics_claims_choose_variants_by_the_registry_families():
  synthesizers = {n for n, (family, _, _) in EXPECTED_FACTS.items() if family == 'synthesizer'}
  assert {n for n in attention.names() if claims.is_synthesizer(n)} == synthesizers
  assert claims.is_synthesizer('random+dense') and not claims.is_synthesizer('random+vanilla')
  assert claims.is_recovering_mixture('random+vanilla')
  assert claims.is_recovering_mixture('dense+cosine+vanilla')
  assert not claims.is_recovering_mixture('cosine+vanilla')
  assert not claims.is_recovering_mixture('random+dense')
  assert not claims.is_synthesizer('sparse') and not claims.is_recovering_mixture('sparse+vanilla')


@pytest.mark.parametrize('name', ['randon', 'random+sparse', ''])
def test_facts_of_an_unknown_name_list_the_valid_ones(name):
  with pytest.raises(ValueError) as error:
    attention.facts(name)
  if name:
    for valid in attention.names():
      assert valid in str(error.value)


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


ATTENTION_DIR = pathlib.Path(attention.__file__).parent


def attention_import_graph() -> dict[str, set[str]]:
  """module -> the modules of `synth_jax.attention` it imports (deferred imports included)."""
  return import_graph.package_graph(ATTENTION_DIR)


def test_the_import_walker_sees_imports_inside_functions():
  source = 'import os\ndef f():\n  from synth_jax.attention import registry\n'
  found = import_graph.imported_modules(source, 'synth_jax.attention.mixture', False,
                           {'synth_jax.attention.registry'})
  assert found == {'os', 'synth_jax.attention.registry'}
  assert import_graph.imported_modules('from . import core\n', 'synth_jax.attention.mixture', False,
                          {'synth_jax.attention.core'}) == {'synth_jax.attention.core'}
  assert import_graph.find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert import_graph.find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) == []


def test_attention_modules_import_each_other_without_a_cycle():
  graph = attention_import_graph()
  assert 'synth_jax.attention.mixture' in graph['synth_jax.attention.registry']
  assert 'synth_jax.attention.core' in graph['synth_jax.attention.kernels']  # subpackages too
  assert import_graph.find_cycle(graph) == []


def test_only_the_package_entry_points_import_the_registry():
  """Variants and the mixture never reach back into the registry that imports them."""
  graph = attention_import_graph()
  importers = {m for m, imported in graph.items() if 'synth_jax.attention.registry' in imported}
  assert importers == {'synth_jax.attention', 'synth_jax.attention.param_count'}
