"""T5X interop: checkpoint conversion, T5X variable conventions, axis/factor rules, gin files.

Everything but the last section runs without T5X. Tests that need T5X itself (gin parsing with
its configurables, its Adafactor enum, its train state and decoding) skip when it is absent.
"""
import dataclasses
import enum
import functools
import os
import re
import sys
import types
from typing import Any

import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax import network
from synth_jax import partitioning
from synth_jax import t5x_interop
from synth_jax.attention import core
from tests import fixtures

REPO = fixtures.REPO
GIN_DIR = os.path.join(REPO, 'gin')
T5X_GIN_FILES = ('t5x/pretrain_c4_base.gin', 't5x/finetune_glue_base.gin')
BATCH, LENGTH = 2, 16
TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 300, (BATCH, LENGTH)), jnp.int32)


@functools.cache
def variables(attention_type, seed=0, **overrides):
  """Boxed variables of the tiny fixture model (cached: several tests share them)."""
  model = fixtures.tiny_model(attention_type, **overrides)
  return model.init(jax.random.key(seed), TOKENS, TOKENS, TOKENS, enable_dropout=False)


def config(attention_type, **overrides):
  """The tiny fixture model's `T5Config`."""
  return fixtures.tiny_model(attention_type, **overrides).config


def flat(tree):
  return {'/'.join(k): v for k, v in t5x_interop._flatten(tree).items()}


def values(tree):
  return {k: np.asarray(nn.unbox(v)) for k, v in flat(tree).items()}


def t5x_checkpoint(seed=0):
  """What `load_t5x_checkpoint` returns for T5X's T5 network: params under 'target'."""
  params = t5x_interop.params_to_t5x(variables('vanilla', seed)['params'], config('vanilla'))
  return {'target': params, 'state': {'step': np.int32(1000)}}


# ----------------------------------------------------------------------------- conversion
def test_vanilla_round_trip_is_identity():
  checkpoint = t5x_checkpoint(seed=0)
  fresh = variables('vanilla', seed=1)['params']
  params, report = t5x_interop.params_from_t5x(checkpoint, fresh)
  ours = values(params)
  assert ours.keys() == values(checkpoint['target']).keys()
  for path, value in values(checkpoint['target']).items():
    np.testing.assert_array_equal(ours[path], value, err_msg=path)
  assert report.copied == {p: p for p in ours} and not report.kept_fresh and not report.unused
  # Boxes (logical axes) survive, so the result drops into a sharded train state.
  assert nn.get_partition_spec(params) == nn.get_partition_spec(fresh)
  back = t5x_interop.params_to_t5x(params, config('vanilla'))
  assert values(back).keys() == values(checkpoint['target']).keys()
  for path, value in values(back).items():
    np.testing.assert_array_equal(value, values(checkpoint['target'])[path])


def test_mixture_takes_every_t5x_weight_and_keeps_synthesizer_params_fresh():
  checkpoint = t5x_checkpoint()
  t5x_values = values(checkpoint['target'])
  fresh = variables('random+vanilla', seed=1)['params']
  params, report = t5x_interop.params_from_t5x(checkpoint, fresh)
  ours, fresh_values = values(params), values(fresh)

  mixtures = ('encoder/layers_0/attention', 'decoder/layers_0/self_attention')
  expected_fresh = {f'{m}/{p}' for m in mixtures for p in ('mixture_logits',
                                                           'random/random_logits')}
  assert set(report.kept_fresh) == expected_fresh
  for path in expected_fresh:
    np.testing.assert_array_equal(ours[path], fresh_values[path])
  # The vanilla member's query/key come from T5X's attention query/key.
  for m in mixtures:
    for name in ('query', 'key'):
      assert report.copied[f'{m}/vanilla/{name}/kernel'] == f'{m}/{name}/kernel'
  # Every T5X weight lands somewhere, with its value.
  assert not report.unused
  assert set(report.copied.values()) == set(t5x_values)
  for path, source in report.copied.items():
    np.testing.assert_array_equal(ours[path], t5x_values[source], err_msg=path)
  assert any('mlp/wi_0' in p for p in report.copied) and 'decoder/logits_dense/kernel' in ours


def test_orthogonal_copies_all_trainables_and_reports_query_key_unused():
  checkpoint = t5x_checkpoint()
  t5x_values = values(checkpoint['target'])
  params, report = t5x_interop.params_from_t5x(checkpoint, variables('orthogonal')['params'])
  self_attention = ('encoder/layers_0/attention', 'decoder/layers_0/self_attention')
  assert set(report.unused) == {f'{m}/{n}/kernel' for m in self_attention for n in ('query', 'key')}
  assert not report.kept_fresh  # its frozen W_Q/W_K are not params: untouched
  for path, value in values(params).items():
    np.testing.assert_array_equal(value, t5x_values[path], err_msg=path)
  # Cross-attention stays vanilla, so its query/key are copied.
  assert 'decoder/layers_0/encoder_decoder_attention/query/kernel' in report.copied


def test_values_take_the_models_dtype():
  checkpoint = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), t5x_checkpoint()['target'])
  params, _ = t5x_interop.params_from_t5x(checkpoint, variables('vanilla')['params'])
  assert {v.dtype for v in values(params).values()} == {np.dtype(np.float32)}


def test_shape_mismatch_names_path_and_both_shapes():
  fresh = variables('vanilla', vocab_size=512)['params']
  with pytest.raises(ValueError) as error:
    t5x_interop.params_from_t5x(t5x_checkpoint(), fresh)
  message = str(error.value)
  assert 'token_embedder/embedding: T5X shape (384, 32)' in message
  assert 'shape (512, 32)' in message and 'VOCAB_SIZE' in message
  assert 'decoder/logits_dense/kernel' in message


def test_tree_sharing_no_path_is_an_error():
  with pytest.raises(ValueError, match='No parameter path'):
    t5x_interop.params_from_t5x({'params': t5x_checkpoint()['target']},
                                variables('vanilla')['params'])


@pytest.mark.parametrize('attention_type', ['random', 'orthogonal', 'dense+vanilla'])
def test_params_to_t5x_rejects_non_vanilla_models(attention_type):
  with pytest.raises(ValueError, match='vanilla models only'):
    t5x_interop.params_to_t5x(variables(attention_type)['params'], config(attention_type))


@pytest.mark.parametrize('attention_type', ['neg_l2', 'topk', 'rotary', 'linear', 'random+vanilla'])
def test_params_to_t5x_refuses_types_t5x_computes_otherwise_naming_the_type(attention_type):
  """neg_l2 and topk trees equal vanilla's (T5X would run another function silently); rotary and
  linear trees lack `relpos_bias` (T5X would fail to restore): refused by name, not by tree."""
  with pytest.raises(ValueError) as error:
    t5x_interop.params_to_t5x(variables(attention_type)['params'], config(attention_type))
  message = str(error.value)
  assert f'encoder_attention={attention_type!r}' in message
  assert 'dot-product attention with the T5 relative position bias' in message
  assert "ATTENTION_TYPE='vanilla'" in message


def test_params_to_t5x_refuses_a_non_vanilla_cross_attention():
  overrides = dict(cross_attention='neg_l2')
  with pytest.raises(ValueError, match="cross_attention='neg_l2'"):
    t5x_interop.params_to_t5x(variables('vanilla', **overrides)['params'],
                              config('vanilla', **overrides))


def test_params_to_t5x_refuses_vanilla_with_the_scale_in_the_logits():
  """`fold_query_scale=False` divides logits by sqrt(head_dim) at run time; T5X never does."""
  overrides = dict(self_attention_options=(('fold_query_scale', False),))
  with pytest.raises(ValueError, match='fold_query_scale'):
    t5x_interop.params_to_t5x(variables('vanilla', **overrides)['params'],
                              config('vanilla', **overrides))


def test_params_to_t5x_rejects_a_tree_its_config_does_not_describe():
  pattern = r'layers_0/(self_)?attention has parameters .*random_logits'
  with pytest.raises(ValueError, match=pattern):
    t5x_interop.params_to_t5x(variables('random')['params'], config('vanilla'))


@pytest.mark.parametrize('attention_type', ['vanilla', 'random', 'orthogonal', 'random+vanilla',
                                            'dense+fixed_random', 'rotary', 'linear'])
def test_assignment_map_restores_what_params_from_t5x_copies(attention_type):
  """T5X's restore rules leave fresh what `params_from_t5x` leaves fresh, plus vanilla members."""
  rules = t5x_interop.vanilla_checkpoint_assignment_map(attention_type)
  assert all(replacement is None for _, replacement in rules)
  skipped = lambda key: any(re.fullmatch(pattern, key) for pattern, _ in rules)
  boxed = variables(attention_type, seed=1)
  _, report = t5x_interop.params_from_t5x(t5x_checkpoint(), boxed['params'])
  renamed = {p for p, source in report.copied.items() if p != source}
  for prefix in ('target/', 'state/param_states/'):
    fresh = {p for p in flat(boxed['params']) if skipped(prefix + p + ('/v' if 'state' in prefix
                                                                          else ''))}
    assert fresh == set(report.kept_fresh) | renamed, prefix
  for path in flat(boxed.get(core.FROZEN, {})):
    assert skipped(f'flax_mutables/{core.FROZEN}/{path}')
  # T5X rejects rules that match nothing: each returned rule must match something.
  keys = [f'target/{p}' for p in flat(boxed['params'])]
  keys += [f'flax_mutables/{core.FROZEN}/{p}' for p in flat(boxed.get(core.FROZEN, {}))]
  for pattern, _ in rules:
    assert any(re.fullmatch(pattern, k) for k in keys), pattern


@dataclasses.dataclass
class StubRestoreCheckpointConfig:
  """Stand-in for `t5x.utils.RestoreCheckpointConfig` (the fields our gin file binds)."""
  path: Any = None
  assignment_map: Any = None
  fallback_to_scratch: bool = False


@pytest.fixture
def restore_gin(monkeypatch):
  """Gin ready to parse gin/t5x/from_vanilla_checkpoint.gin, with a stub `t5x.utils` where T5X
  is absent (the file binds nothing else of T5X's)."""
  try:
    import t5x.utils  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    package, utils = types.ModuleType('t5x'), types.ModuleType('t5x.utils')
    utils.RestoreCheckpointConfig = StubRestoreCheckpointConfig
    package.utils = utils
    monkeypatch.setitem(sys.modules, 't5x', package)
    monkeypatch.setitem(sys.modules, 't5x.utils', utils)
  gin.add_config_file_search_path(GIN_DIR)
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize('attention_type', attention.names() + ['rotary+vanilla'])
def test_from_vanilla_checkpoint_gin_evaluates_for_every_variant(restore_gin, attention_type):
  """The gin file's restore rules evaluate for every registry name (rotary once died there:
  its probe had head_dim=1, which rotary attention cannot rotate)."""
  del restore_gin
  gin.parse_config_files_and_bindings(['t5x/from_vanilla_checkpoint.gin'],
                                      [f'ATTENTION_TYPE = {attention_type!r}'],
                                      finalize_config=False)
  reference = gin.query_parameter('utils.RestoreCheckpointConfig.assignment_map')
  rules = reference.scoped_configurable_fn()
  assert rules == t5x_interop.vanilla_checkpoint_assignment_map(attention_type)
  assert gin.query_parameter('utils.RestoreCheckpointConfig.fallback_to_scratch') is True


# ------------------------------------------------------------------------- axis and factor rules
class FakeFactorDim(enum.Enum):
  """Stand-in for `t5x.adafactor.FactorDim` (same members and values)."""
  NONE = None
  BATCH = 1
  ROW = 2
  COLUMN = 3


def test_additional_axis_rules_cover_exactly_the_axes_t5x_lacks():
  rules = dict(t5x_interop.additional_logical_axis_rules())
  ours = partitioning.axis_rules()
  assert set(rules) == set(ours) - t5x_interop.T5X_STANDARD_AXES
  assert {'synth_query_length', 'synth_key_length', 'mixture_members'} <= set(rules)
  assert all(rules[name] == ours[name].mesh_axis for name in rules)


def test_factor_rules_extend_t5x_standard_and_win_on_heads():
  standard = {'heads': FakeFactorDim.COLUMN, 'layers': FakeFactorDim.BATCH}
  rules = t5x_interop.adafactor_factor_rules(standard, FakeFactorDim)
  assert rules['layers'] is FakeFactorDim.BATCH  # T5X's own axes are kept
  assert rules['heads'] is FakeFactorDim.BATCH  # a stack of per-head matrices
  assert rules['synth_query_length'] is FakeFactorDim.ROW
  assert rules['synth_key_length'] is FakeFactorDim.COLUMN
  assert rules['synth_rank'] is FakeFactorDim.NONE
  assert set(partitioning.axis_rules()) <= set(rules)


ALL_TYPES = ['vanilla', 'dense', 'factorized_dense', 'random', 'fixed_random',
             'factorized_random', 'orthogonal', 'random+vanilla', 'dense+random+vanilla']


@pytest.mark.parametrize('attention_type', ALL_TYPES)
def test_no_parameter_gets_an_incomplete_t5x_factor_spec(attention_type):
  """T5X's Adafactor rejects a spec with ROW, COLUMN and NONE together; check ours never is."""
  rules = t5x_interop.adafactor_factor_rules({}, FakeFactorDim)
  model = fixtures.tiny_model(attention_type)
  abstract = jax.eval_shape(functools.partial(model.init, enable_dropout=False),
                            jax.random.key(0), TOKENS, TOKENS, TOKENS)
  for path, leaf in flat(abstract['params']).items():
    spec = {rules[name] for name in leaf.names}  # KeyError: an axis without a factor rule
    complete = {FakeFactorDim.ROW, FakeFactorDim.COLUMN, FakeFactorDim.NONE} <= spec
    assert not complete, (path, leaf.names)


# ---------------------------------------------------------------------- T5X's module conventions
def t5x_module(attention_type):
  return t5x_interop.T5XTransformer(fixtures.tiny_model(attention_type).config)


@pytest.mark.parametrize('attention_type', ['vanilla', 'orthogonal'])
def test_init_emits_unboxed_variables_and_axes_collections(attention_type):
  boxed = variables(attention_type)
  t5x_vars = t5x_module(attention_type).init(jax.random.key(0), TOKENS, TOKENS, TOKENS,
                                             enable_dropout=False)
  collections = ['params'] + ([core.FROZEN] if core.FROZEN in boxed else [])
  assert set(t5x_vars) == set(collections) | {c + '_axes' for c in collections}
  for collection in collections:
    assert not any(isinstance(v, nn.Partitioned) for v in flat(t5x_vars[collection]).values())
    axes = flax_partitioning.get_axis_names(t5x_vars[collection + '_axes'])
    assert flat(axes) == flat(nn.get_partition_spec(boxed[collection]))
    for path, value in values(t5x_vars[collection]).items():
      np.testing.assert_array_equal(value, values(boxed[collection])[path])


def test_flax_mutables_reach_apply():
  boxed = variables('orthogonal')
  unboxed = nn.unbox(boxed)
  expected = network.Transformer(t5x_module('orthogonal').config).apply(
      unboxed, TOKENS, TOKENS, TOKENS, enable_dropout=False)
  module = t5x_module('orthogonal').clone(flax_mutables={core.FROZEN: unboxed[core.FROZEN]})
  logits = module.apply({'params': unboxed['params']}, TOKENS, TOKENS, TOKENS, enable_dropout=False)
  np.testing.assert_array_equal(logits, expected)


def test_decode_cache_survives_t5x_beam_expansion():
  """T5X's beam search repeats every cache leaf but `cache_index` along axis 0."""
  module = t5x_module('random')
  params = nn.unbox(variables('random'))['params']
  _, init_cache = module.apply({'params': params}, TOKENS, TOKENS, TOKENS, decode=True,
                               enable_dropout=False, mutable=['cache'])
  cache = init_cache['cache']
  for path, leaf in flat(cache).items():
    assert path.endswith('cache_index') or leaf.shape[0] == BATCH, path

  encoded = module.apply({'params': params}, TOKENS, enable_dropout=False, method=module.encode)
  def step(cache, repeats):
    expand = lambda x: jnp.repeat(x, repeats, axis=0)
    expanded = {p: v if p.endswith('cache_index') else expand(v) for p, v in flat(cache).items()}
    expanded = t5x_interop._unflatten({tuple(p.split('/')): v for p, v in expanded.items()})
    token = expand(TOKENS[:, :1])
    logits, _ = module.apply({'params': params, 'cache': expanded}, expand(encoded),
                             expand(TOKENS), token, token, enable_dropout=False, decode=True,
                             max_decode_length=LENGTH, mutable=['cache'], method=module.decode)
    return logits
  np.testing.assert_allclose(step(cache, 3), jnp.repeat(step(cache, 1), 3, axis=0), atol=1e-6)


# ----------------------------------------------------------------------------- with T5X installed
@pytest.fixture
def t5x_gin(monkeypatch):
  """Gin ready to parse gin/t5x files as `python -m t5x.train` does (T5X required)."""
  pytest.importorskip('t5x')
  import t5x  # pylint: disable=g-import-not-at-top
  from t5x import train  # pylint: disable=g-import-not-at-top
  # T5X's run files bind `__main__.train` (`import __main__ as train_script`).
  monkeypatch.setattr(sys.modules['__main__'], 'train', train.train, raising=False)
  for path in (GIN_DIR, os.path.dirname(os.path.dirname(t5x.__file__))):
    gin.add_config_file_search_path(path)
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize('gin_file', T5X_GIN_FILES)
def test_gin_file_builds_t5x_model_partitioner_and_task(t5x_gin, gin_file):
  del t5x_gin
  import seqio  # pylint: disable=g-import-not-at-top
  from t5x import adafactor  # pylint: disable=g-import-not-at-top
  gin.parse_config_files_and_bindings(
      [gin_file, 't5x/from_vanilla_checkpoint.gin'],
      ["MODEL_DIR = '/tmp/unused'", "ATTENTION_TYPE = 'random+vanilla'",
       "INITIAL_CHECKPOINT_PATH = '/tmp/unused'", 'models.DecoderParams.num_decodes = 4'],
      finalize_config=False)
  model = gin.query_parameter('%MODEL').scoped_configurable_fn()
  assert isinstance(model.module, t5x_interop.T5XTransformer)
  assert model.module.config.encoder_attention == 'random+vanilla'
  assert model.module.config.emb_dim == 768
  assert model._default_decoder_params.num_decodes == 4  # pylint: disable=protected-access
  factor_rules = model.optimizer_def.hyper_params.logical_factor_rules
  assert factor_rules['synth_query_length'] is adafactor.FactorDim.ROW
  assert factor_rules['heads'] is adafactor.FactorDim.BATCH
  partitioner = gin.query_parameter('train_script.train.partitioner').scoped_configurable_fn()
  rules = dict(partitioner.logical_axis_rules)
  assert rules['synth_key_length'] is None and rules['joined_kv'] == 'model'
  task = gin.query_parameter('%MIXTURE_OR_TASK_NAME')
  assert task.startswith('synth_jax_') and seqio.get_mixture_or_task(task).name == task
  assert gin.query_parameter('%USE_CACHED_TASKS') is False
  restore = gin.query_parameter('utils.CheckpointConfig.restore').scoped_configurable_fn()
  assert restore.fallback_to_scratch
  assert restore.assignment_map == t5x_interop.vanilla_checkpoint_assignment_map('random+vanilla')


def test_t5x_standard_rules_match_our_constant_and_shared_axes():
  pytest.importorskip('t5x')
  from t5x import partitioning as t5x_partitioning  # pylint: disable=g-import-not-at-top
  standard = t5x_partitioning.standard_logical_axis_rules()
  assert {name for name, _ in standard} == t5x_interop.T5X_STANDARD_AXES
  for name, mesh_axis in standard:
    if name in partitioning.axis_rules():
      assert partitioning.axis_rules()[name].mesh_axis == mesh_axis, name


def test_t5x_model_passes_frozen_through_and_scores_like_synth_jax():
  pytest.importorskip('t5x')
  import seqio  # pylint: disable=g-import-not-at-top
  from t5x import adafactor  # pylint: disable=g-import-not-at-top
  from t5x import train_state as train_state_lib  # pylint: disable=g-import-not-at-top
  optimizer = adafactor.Adafactor(logical_factor_rules=t5x_interop.adafactor_factor_rules())
  model = t5x_interop.EncoderDecoderModel(
      module=t5x_module('orthogonal'), input_vocabulary=seqio.ByteVocabulary(),
      output_vocabulary=seqio.ByteVocabulary(), optimizer_def=optimizer)
  shapes = {k: (BATCH, LENGTH) for k in ('encoder_input_tokens', 'decoder_input_tokens')}
  initial = model.get_initial_variables(jax.random.key(0), shapes, {k: jnp.int32 for k in shapes})
  state = train_state_lib.FlaxOptimTrainState.create(optimizer, initial)
  assert set(state.flax_mutables) == {core.FROZEN}
  assert not any(core.FROZEN in k for k in flat(state.param_states))

  targets = TOKENS.at[:, -4:].set(0)
  batch = {'encoder_input_tokens': TOKENS, 'decoder_target_tokens': targets,
           'decoder_input_tokens': jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1],
           'decoder_loss_weights': (targets > 0).astype(jnp.int32)}
  _, (_, mutables) = model.loss_fn(state.params, batch, None, state.flax_mutables)
  assert mutables is state.flax_mutables
  scores = model.score_batch(state.params, batch, flax_mutables=state.flax_mutables)
  logits = network.Transformer(model.module.config).apply(
      {'params': state.params, **state.flax_mutables}, batch['encoder_input_tokens'],
      batch['decoder_input_tokens'], targets, enable_dropout=False)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(scores, (log_probs * batch['decoder_loss_weights']).sum(-1),
                             rtol=1e-5)
  predictions, _ = model.predict_batch_with_aux(state.params, batch, num_decodes=2,
                                                flax_mutables=state.flax_mutables)
  assert predictions.shape == (BATCH, LENGTH)
