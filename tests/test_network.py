"""T5 network: T5X parameter tree, masks (padding, packing), decode cache, gin wiring."""
import functools
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax import network
from synth_jax.attention import kernels
from tests import fixtures
from tests.attention import helpers

REPO = fixtures.REPO
TINY_GIN = os.path.join(REPO, 'gin', 'models', 't5_1_1_tiny.gin')
VOCAB = 50


# The shared tiny T5 at 2+2 layers (T5X_PATHS below names layers_1), VOCAB tokens, and targets
# shorter than inputs (12 and 16).
SIZES = dict(vocab_size=VOCAB, num_encoder_layers=2, num_decoder_layers=2, max_decoder_length=12)


def tiny_config(**overrides):
  return fixtures.tiny_config(**{**SIZES, **overrides})


def init(model, enc, dec_in, dec_tgt, seed=0):
  return model.init(jax.random.key(seed), enc, dec_in, dec_tgt, enable_dropout=False)


def abstract_variables(model, enc, dec_in, dec_tgt):
  """The variables `init` would create, as shapes (traced, not computed)."""
  return jax.eval_shape(functools.partial(model.init, enable_dropout=False),
                        jax.random.key(0), enc, dec_in, dec_tgt)


def noise_variables(model, enc, dec_in, dec_tgt, seed=0):
  """`model`'s variables of `init`'s shapes, filled with noise (`fixtures.noise_like`)."""
  abstract = abstract_variables(model, enc, dec_in, dec_tgt)
  return fixtures.noise_like(nn.unbox(abstract), np.random.default_rng(seed))


def leaf_paths(tree):
  return {'/'.join(k.key for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(nn.unbox(tree))[0]}


def batch(seed=0, size=2, enc_len=7, dec_len=5):
  """Random non-padding tokens; decoder inputs are the targets shifted right with 0."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(1, VOCAB, (size, enc_len))
  tgt = rng.integers(1, VOCAB, (size, dec_len))
  dec_in = np.concatenate([np.zeros((size, 1), tgt.dtype), tgt[:, :-1]], axis=1)
  return jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt)


# The T5X `examples/t5` network's parameters for 2+2 layers (t5x/examples/t5/network.py).
_ATTENTION = ['query/kernel', 'key/kernel', 'value/kernel', 'out/kernel']
_MLP = ['mlp/wi_0/kernel', 'mlp/wi_1/kernel', 'mlp/wo/kernel']
T5X_PATHS = {'token_embedder/embedding', 'encoder/relpos_bias/rel_embedding',
             'encoder/encoder_norm/scale', 'decoder/relpos_bias/rel_embedding',
             'decoder/decoder_norm/scale', 'decoder/logits_dense/kernel'}
for _i in range(2):
  _enc, _dec = f'encoder/layers_{_i}', f'decoder/layers_{_i}'
  T5X_PATHS |= {f'{_enc}/pre_attention_layer_norm/scale', f'{_enc}/pre_mlp_layer_norm/scale'}
  T5X_PATHS |= {f'{_enc}/attention/{a}' for a in _ATTENTION}
  T5X_PATHS |= {f'{_enc}/{m}' for m in _MLP}
  T5X_PATHS |= {f'{_dec}/{n}/scale' for n in ('pre_self_attention_layer_norm',
                                             'pre_cross_attention_layer_norm',
                                             'pre_mlp_layer_norm')}
  T5X_PATHS |= {f'{_dec}/{b}/{a}' for b in ('self_attention', 'encoder_decoder_attention')
                for a in _ATTENTION}
  T5X_PATHS |= {f'{_dec}/{m}' for m in _MLP}


@pytest.fixture(scope='module')
def vanilla():
  """A vanilla tiny model and its variables; other configs with the same params reuse them."""
  model = network.Transformer(tiny_config())
  return model, init(model, *batch())


def test_vanilla_param_tree_equals_t5x_and_every_param_has_logical_axes(vanilla):
  _, variables = vanilla
  assert set(variables) == {'params'}
  assert leaf_paths(variables['params']) == T5X_PATHS
  specs = nn.get_partition_spec(variables)['params']
  params = nn.unbox(variables)['params']
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    spec = specs
    for key in path:
      spec = spec[key.key]
    assert isinstance(spec, jax.sharding.PartitionSpec), path
    assert len(spec) == value.ndim and all(isinstance(a, str) for a in spec), (path, spec)
  assert specs['decoder']['logits_dense']['kernel'] == jax.sharding.PartitionSpec('embed', 'vocab')
  assert specs['token_embedder']['embedding'] == jax.sharding.PartitionSpec('vocab', 'embed')
  assert params['decoder']['logits_dense']['kernel'].shape == (32, VOCAB)


def test_logits_are_float32_batch_length_vocab_even_in_bfloat16(vanilla):
  model, variables = vanilla
  enc, dec_in, tgt = batch()
  full = model.apply(variables, enc, dec_in, tgt, enable_dropout=False)
  bf16 = network.Transformer(tiny_config(dtype='bfloat16'))
  logits = bf16.apply(variables, enc, dec_in, tgt, enable_dropout=False)
  assert logits.shape == (2, 5, VOCAB) and logits.dtype == jnp.float32
  # bfloat16 activations (8 mantissa bits) track the float32 model closely.
  np.testing.assert_allclose(logits, full, atol=0.1 * float(jnp.std(full)))


def logits_and_decoder_output(model, variables):
  """The logits of `batch()` and the decoder's final-norm output they are projected from."""
  enc, dec_in, tgt = batch()
  logits, state = model.apply(
      variables, enc, dec_in, tgt, enable_dropout=False,
      capture_intermediates=lambda module, _: module.name == 'decoder_norm')
  return logits, np.asarray(state['intermediates']['decoder']['decoder_norm']['__call__'][0])


def test_bfloat16_logits_matmul_rounds_its_operands_and_keeps_float32_logits(vanilla):
  _, variables = vanilla
  enc, dec_in, tgt = batch()
  model = network.Transformer(tiny_config(logits_matmul_dtype='bfloat16'))
  logits, decoded = logits_and_decoder_output(model, variables)
  kernel = np.asarray(nn.unbox(variables)['params']['decoder']['logits_dense']['kernel'])
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, helpers.round_bf16(decoded) @ helpers.round_bf16(kernel),
                             rtol=1e-5, atol=1e-5)
  # The default (T5X's) multiplies in float32: the same decoder output, unrounded.
  np.testing.assert_allclose(network.Transformer(tiny_config()).apply(
      variables, enc, dec_in, tgt, enable_dropout=False), decoded @ kernel, rtol=1e-5,
                             atol=1e-5)


def test_bfloat16_tied_logits_round_their_operands_and_stay_float32(vanilla):
  _, variables = vanilla
  model = network.Transformer(tiny_config(logits_via_embedding=True,
                                          logits_matmul_dtype='bfloat16'))
  logits, decoded = logits_and_decoder_output(model, variables)
  table = np.asarray(nn.unbox(variables)['params']['token_embedder']['embedding'])
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(
      logits, helpers.round_bf16(decoded) @ helpers.round_bf16(table).T / np.sqrt(32),
      rtol=1e-5, atol=1e-5)


def test_bfloat16_logits_matmul_keeps_the_loss_and_every_gradient_close(vanilla):
  """End to end: the rounding of the logits matmul's operands and cotangent stays at bf16 scale."""
  _, variables = vanilla
  enc, dec_in, tgt = batch()
  models = [network.Transformer(tiny_config(logits_matmul_dtype=d))
            for d in ('float32', 'bfloat16')]

  def loss(params, model):
    logits = model.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1))

  params = nn.unbox(variables)['params']
  (want, want_grads), (got, got_grads) = (
      jax.jit(jax.value_and_grad(functools.partial(loss, model=m)))(params) for m in models)
  np.testing.assert_allclose(got, want, rtol=1e-2)
  flat_want = jax.tree_util.tree_leaves_with_path(want_grads)
  for (path, w), g in zip(flat_want, jax.tree.leaves(got_grads)):
    assert g.dtype == jnp.float32, path
    scale = float(jnp.max(jnp.abs(w)))
    np.testing.assert_allclose(g, w, atol=2e-2 * scale, err_msg=jax.tree_util.keystr(path))


def test_logits_matmul_dtype_other_than_float32_or_bfloat16_names_the_knob():
  with pytest.raises(ValueError, match='T5Config.logits_matmul_dtype=.float16.'):
    tiny_config(logits_matmul_dtype='float16')


def test_tied_logits_use_the_scaled_embedding(vanilla):
  _, variables = vanilla
  model = network.Transformer(tiny_config(logits_via_embedding=True))
  enc, dec_in, tgt = batch()
  params = dict(variables['params'])
  params['decoder'] = {k: v for k, v in params['decoder'].items() if k != 'logits_dense'}
  logits = model.apply({'params': params}, enc, dec_in, tgt, enable_dropout=False)

  # The same decoder output through the embedding matrix, divided by sqrt(emb_dim).
  untied = network.Transformer(tiny_config())
  unboxed = nn.unbox(variables)
  table = unboxed['params']['token_embedder']['embedding']
  kernel = table.T / np.sqrt(32)
  swapped = jax.tree.map(lambda x: x, unboxed)
  swapped['params']['decoder']['logits_dense']['kernel'] = kernel
  expected = untied.apply(swapped, enc, dec_in, tgt, enable_dropout=False)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_dropout_changes_outputs_only_when_enabled(vanilla):
  _, variables = vanilla
  model = network.Transformer(tiny_config(dropout_rate=0.3))
  enc, dec_in, tgt = batch()
  off = model.apply(variables, enc, dec_in, tgt, enable_dropout=False)
  np.testing.assert_array_equal(off, vanilla[0].apply(variables, enc, dec_in, tgt,
                                                      enable_dropout=False))
  on = model.apply(variables, enc, dec_in, tgt, enable_dropout=True,
                   rngs={'dropout': jax.random.key(1)})
  assert not np.allclose(off, on)


@pytest.mark.parametrize('attention_type', ['vanilla', 'random'])
def test_padding_never_changes_logits_at_nonpad_positions(attention_type):
  """More encoder/decoder padding, or different encodings at padded positions, change nothing."""
  model = network.Transformer(tiny_config(encoder_attention=attention_type,
                                          decoder_attention=attention_type))
  enc, dec_in, tgt = batch()
  enc = enc.at[1, 4:].set(0)  # the second example has 4 encoder tokens and 2 targets
  tgt = tgt.at[1, 2:].set(0)
  dec_in = dec_in.at[1, 3:].set(0)
  variables = noise_variables(model, enc, dec_in, tgt)
  logits = model.apply(variables, enc, dec_in, tgt, enable_dropout=False)

  pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n)))
  longer = model.apply(variables, pad(enc, 2), pad(dec_in, 2), pad(tgt, 2), enable_dropout=False)
  nonpad = np.asarray(tgt > 0)
  np.testing.assert_allclose(longer[:, :5][nonpad], logits[nonpad], rtol=1e-5, atol=1e-5)

  # Garbage encodings at the padded encoder positions are invisible to the decoder.
  encoded = model.apply(variables, enc, enable_dropout=False, method='encode')
  noise = jax.random.normal(jax.random.key(3), encoded.shape) * 10
  perturbed = jnp.where((enc > 0)[..., None], encoded, noise)
  decoded = model.apply(variables, perturbed, enc, dec_in, tgt, enable_dropout=False,
                        method='decode')
  np.testing.assert_allclose(decoded[nonpad], logits[nonpad], rtol=1e-5, atol=1e-5)


def test_segment_positions_restart_at_each_segment():
  ids = jnp.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 2, 2, 2, 2, 2, 2, 2]])
  np.testing.assert_array_equal(attention.masks.segment_positions(ids),
                                [[0, 1, 2, 0, 1, 0, 0, 1], [0, 0, 1, 2, 3, 4, 5, 6]])


# Random synthesizers on the packed gather kernel ('fast') and on the reference path.
@pytest.mark.parametrize('attention_type,execution', [
    ('vanilla', 'fast'), ('dense', 'fast'), ('factorized_random', 'fast'), ('random', 'fast'),
    ('random', 'reference'), ('dense', 'reference')])
def test_packed_sequences_give_the_logits_of_each_run_alone(attention_type, execution):
  """Packing is invisible, also to synthesizers whose logits depend on absolute positions."""
  model = network.Transformer(tiny_config(encoder_attention=attention_type,
                                          decoder_attention=attention_type,
                                          cross_attention=('dense' if attention_type == 'dense'
                                                           else 'vanilla')),
                              attention_execution=execution)
  rng = np.random.default_rng(5)
  enc_a, enc_b = rng.integers(1, VOCAB, 3), rng.integers(1, VOCAB, 4)
  tgt_a, tgt_b = rng.integers(1, VOCAB, 3), rng.integers(1, VOCAB, 2)
  shift = lambda t: np.concatenate([[0], t[:-1]])
  rows = lambda *rows: jnp.asarray(np.stack(rows))
  padded = lambda x, n: np.pad(x, (0, n - len(x)))

  # Row 0 packs A then B, row 1 packs B then A: 7 encoder and 5 decoder positions each.
  enc = rows(np.r_[enc_a, enc_b], np.r_[enc_b, enc_a])
  enc_seg = rows([1] * 3 + [2] * 4, [1] * 4 + [2] * 3)
  enc_pos = rows(np.r_[0:3, 0:4], np.r_[0:4, 0:3])
  tgt = rows(np.r_[tgt_a, tgt_b], np.r_[tgt_b, tgt_a])
  dec_in = rows(np.r_[shift(tgt_a), shift(tgt_b)], np.r_[shift(tgt_b), shift(tgt_a)])
  dec_seg = rows([1] * 3 + [2] * 2, [1] * 2 + [2] * 3)
  dec_pos = rows(np.r_[0:3, 0:2], np.r_[0:2, 0:3])
  variables = noise_variables(model, enc, dec_in, tgt)
  packed = model.apply(variables, enc, dec_in, tgt, encoder_segment_ids=enc_seg,
                       decoder_segment_ids=dec_seg, encoder_positions=enc_pos,
                       decoder_positions=dec_pos, enable_dropout=False)

  alone = model.apply(variables, rows(padded(enc_a, 7), padded(enc_b, 7)),
                      rows(padded(shift(tgt_a), 5), padded(shift(tgt_b), 5)),
                      rows(padded(tgt_a, 5), padded(tgt_b, 5)), enable_dropout=False)
  a, b = alone[0, :3], alone[1, :2]
  np.testing.assert_allclose(packed[0], np.concatenate([a, b]), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[1], np.concatenate([b, a]), rtol=1e-5, atol=1e-5)

  # Without explicit positions they are derived from the segment ids.
  derived = model.apply(variables, enc, dec_in, tgt, encoder_segment_ids=enc_seg,
                        decoder_segment_ids=dec_seg, enable_dropout=False)
  np.testing.assert_allclose(derived, packed, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('attention_type', ['vanilla', 'orthogonal'])
@pytest.mark.parametrize('pack', [False, True])
def test_fused_attention_gives_the_logits_of_the_core_path(attention_type, pack, monkeypatch):
  """'xla' execution reroutes self- and cross-attention; the logits stay those of the core."""
  config = tiny_config(encoder_attention=attention_type, decoder_attention=attention_type)
  enc, dec_in, tgt = batch(seed=2)
  enc, tgt = enc.at[1, 5:].set(0), tgt.at[1, 3:].set(0)
  dec_in = dec_in.at[1, 4:].set(0)
  packing = {}
  if pack:
    packing = dict(encoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 2, 0, 0]]),
                   decoder_segment_ids=jnp.array([[1, 1, 2, 2, 2], [1, 2, 2, 0, 0]]))
  core_model, fused_model = (network.Transformer(config, attention_execution=execution)
                             for execution in ('reference', 'xla'))
  calls = []
  flash_attention = kernels.flash.flash_attention
  monkeypatch.setattr(kernels.flash, 'flash_attention',
                      lambda *a, **k: calls.append(1) or flash_attention(*a, **k))
  variables = noise_variables(core_model, enc, dec_in, tgt)
  want = core_model.apply(variables, enc, dec_in, tgt, enable_dropout=False, **packing)
  got = fused_model.apply(variables, enc, dec_in, tgt, enable_dropout=False, **packing)
  nonpad = np.asarray(tgt > 0)
  np.testing.assert_allclose(got[nonpad], want[nonpad], rtol=1e-5, atol=1e-5)
  # Every encoder, decoder and cross-attention took the kernel.
  assert len(calls) == config.num_encoder_layers + 2 * config.num_decoder_layers


@pytest.mark.parametrize('attention_type,pack', [('vanilla', False), ('neg_l2', True),
                                                 ('hyperbolic', True), ('topk', False),
                                                 ('random+vanilla', True)])
def test_blockwise_execution_gives_the_logits_and_gradients_of_the_core_path(attention_type, pack):
  """'blockwise' reroutes every attention, reading the T5 bias by its table, block by block."""
  config = tiny_config(encoder_attention=attention_type, decoder_attention=attention_type)
  enc, dec_in, tgt = batch(seed=3)
  enc, tgt, dec_in = enc.at[1, 5:].set(0), tgt.at[1, 3:].set(0), dec_in.at[1, 4:].set(0)
  packing = {}
  if pack:
    packing = dict(encoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 2, 0, 0]]),
                   decoder_segment_ids=jnp.array([[1, 1, 2, 2, 2], [1, 2, 2, 0, 0]]))
  core_model = network.Transformer(config, attention_execution='reference')
  blocked_model = network.Transformer(config, attention_execution='blockwise')
  variables = noise_variables(core_model, enc, dec_in, tgt)
  nonpad = np.asarray(tgt > 0)

  def logits_and_grads(model):
    def loss(params):
      logits = model.apply({**variables, 'params': params}, enc, dec_in, tgt,
                           enable_dropout=False, **packing)
      return jnp.sum(jnp.where(nonpad[..., None], logits, 0) ** 2) / 1e3, logits
    return jax.jit(jax.grad(loss, has_aux=True))(variables['params'])
  want_grads, want = logits_and_grads(core_model)
  got_grads, got = logits_and_grads(blocked_model)
  np.testing.assert_allclose(got[nonpad], want[nonpad], rtol=1e-4, atol=1e-4)
  for name in ('encoder', 'decoder'):
    if attention.uses_position_bias(attention_type):
      np.testing.assert_allclose(got_grads[name]['relpos_bias']['rel_embedding'],
                                 want_grads[name]['relpos_bias']['rel_embedding'],
                                 rtol=1e-3, atol=1e-4)
  flat_got, flat_want = jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)
  for g, w in zip(flat_got, flat_want):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4 * max(1.0, float(np.abs(w).max())))


@pytest.mark.parametrize('attention_type,execution', [(t, 'fast') for t in attention.names()]
                         + [('random+vanilla', 'fast'), ('vanilla', 'xla'), ('orthogonal', 'xla'),
                            ('random', 'reference'), ('hyperbolic', 'blockwise'),
                            ('topk', 'blockwise'), ('random', 'blockwise'),
                            ('neg_l2', 'xla')])
def test_decode_cache_matches_full_forward(attention_type, execution):
  """Teacher-forced decoding one token per step reproduces the full forward pass's logits."""
  length = 5
  model = network.Transformer(tiny_config(decoder_attention=attention_type),
                              attention_execution=execution)
  enc, dec_in, tgt = batch(seed=1, dec_len=length)
  enc = enc.at[0, 4:].set(0)
  variables = noise_variables(model, enc, dec_in, tgt)
  full = model.apply(variables, enc, dec_in, tgt, enable_dropout=False)

  _, state = model.apply(variables, enc, dec_in, tgt, enable_dropout=False, decode=True,
                         mutable=['cache'])
  cache = state['cache']
  encoded = model.apply(variables, enc, enable_dropout=False, method='encode')

  @jax.jit
  def step(cache, token, target):
    return model.apply({**variables, 'cache': cache}, encoded, enc, token, target,
                       enable_dropout=False, decode=True, max_decode_length=length,
                       method='decode', mutable=['cache'])

  for t in range(length):
    logits, state = step(cache, dec_in[:, t:t + 1], tgt[:, t:t + 1])
    cache = state['cache']
    assert logits.shape == (2, 1, VOCAB)
    np.testing.assert_allclose(logits[:, 0], full[:, t], rtol=1e-4, atol=1e-4,
                               err_msg=f'step {t}')


def test_decode_steps_without_max_decode_length_are_an_error(vanilla):
  model, variables = vanilla
  enc, dec_in, tgt = batch()
  _, state = model.apply(variables, enc, dec_in, tgt, enable_dropout=False, decode=True,
                         mutable=['cache'])
  encoded = model.apply(variables, enc, enable_dropout=False, method='encode')
  with pytest.raises(ValueError, match='max_decode_length'):
    model.apply({**variables, **state}, encoded, enc, dec_in[:, :1], tgt[:, :1], decode=True,
                enable_dropout=False, method='decode', mutable=['cache'])


@pytest.mark.parametrize('cross', ['random', 'fixed_random', 'factorized_random',
                                   'dense+random'])
def test_position_dependent_cross_attention_is_a_clear_error(cross):
  with pytest.raises(ValueError, match=r'T5Config\.cross_attention') as err:
    tiny_config(cross_attention=cross)
  assert 'vanilla' in str(err.value) and 'dense' in str(err.value)


def test_unknown_attention_execution_names_the_knob_and_the_choices():
  model = network.Transformer(tiny_config(), attention_execution='cuda')
  with pytest.raises(ValueError, match=r"Transformer.attention_execution='cuda' .*'reference', "
                                       r"'fast', 'blockwise', 'cudnn', 'xla', 'auto'"):
    abstract_variables(model, *batch())


def test_unknown_attention_type_names_the_config_field():
  with pytest.raises(ValueError, match=r'T5Config\.decoder_attention.*unknown'):
    tiny_config(decoder_attention='flash')


def test_position_free_cross_attention_builds():
  model = network.Transformer(tiny_config(cross_attention='dense'))
  variables = abstract_variables(model, *batch())
  assert 'dense_2' in variables['params']['decoder']['layers_0']['encoder_decoder_attention']


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_gin_attention_type_macro_sets_encoder_and_decoder_self_attention(clean_gin):
  gin.parse_config_files_and_bindings(
      [TINY_GIN], ["ATTENTION_TYPE = 'random'", f'VOCAB_SIZE = {VOCAB}'])
  model = gin.get_configurable('synth_jax.network.Transformer')()
  assert model.config.encoder_attention == model.config.decoder_attention == 'random'
  assert model.config.cross_attention == 'vanilla'
  params = nn.unbox(abstract_variables(model, *batch())['params'])
  for i in range(2):
    # Score maps sized by the file's max lengths (512 inputs, 114 targets), one per head.
    assert params['encoder'][f'layers_{i}']['attention']['random_logits'].shape == (2, 512, 512)
    assert (params['decoder'][f'layers_{i}']['self_attention']['random_logits'].shape
            == (2, 114, 114))
    assert 'query' in params['decoder'][f'layers_{i}']['encoder_decoder_attention']


def test_cudnn_gin_file_turns_on_fused_attention(clean_gin):
  gin.parse_config_files_and_bindings(
      [TINY_GIN, os.path.join(REPO, 'gin', 'runs', 'cudnn.gin')], [f'VOCAB_SIZE = {VOCAB}'])
  model = gin.get_configurable('synth_jax.network.Transformer')()
  assert model.attention_execution == 'cudnn'


def test_bf16_logits_gin_file_sets_the_logits_matmul_dtype(clean_gin):
  gin.parse_config_files_and_bindings(
      [TINY_GIN, os.path.join(REPO, 'gin', 'runs', 'bf16_logits.gin')], [f'VOCAB_SIZE = {VOCAB}'])
  model = gin.get_configurable('synth_jax.network.Transformer')()
  assert model.config.logits_matmul_dtype == jnp.bfloat16


def test_gin_binds_attention_execution_as_the_readme_says(clean_gin):
  gin.parse_config_files_and_bindings(
      [TINY_GIN], ["Transformer.attention_execution = 'xla'", f'VOCAB_SIZE = {VOCAB}'])
  model = gin.get_configurable('synth_jax.network.Transformer')()
  assert model.attention_execution == 'xla'
  enc, dec_in, tgt = batch()
  variables = noise_variables(model, enc, dec_in, tgt)
  plain = network.Transformer(model.config, attention_execution='reference')
  np.testing.assert_allclose(model.apply(variables, enc, dec_in, tgt, enable_dropout=False),
                             plain.apply(variables, enc, dec_in, tgt, enable_dropout=False),
                             rtol=1e-5, atol=1e-5)


def test_gin_tiny_default_is_vanilla_t5x_tree(clean_gin):
  gin.parse_config_files_and_bindings([TINY_GIN], [f'VOCAB_SIZE = {VOCAB}'])
  model = gin.get_configurable('synth_jax.network.Transformer')()
  assert leaf_paths(abstract_variables(model, *batch())['params']) == T5X_PATHS


def test_self_attention_options_reach_the_variant():
  model = fixtures.tiny_model('factorized_random', max_length=8,
                              self_attention_options={'rank': 3})
  tokens = jnp.ones((1, 8), jnp.int32)
  params = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), tokens, tokens, tokens)))['params']
  assert params['encoder']['layers_0']['attention']['query_factor'].shape == (2, 8, 3)
  assert params['decoder']['layers_0']['self_attention']['key_factor'].shape == (2, 8, 3)


def test_self_attention_options_that_do_not_fit_the_type_are_a_clear_error():
  model = fixtures.tiny_model(self_attention_options={'rank': 3})
  tokens = jnp.ones((1, 8), jnp.int32)
  with pytest.raises(ValueError, match=r"self_attention_options=\{'rank': 3\} do not fit .*'vanilla'"):
    model.init(jax.random.key(0), tokens, tokens, tokens)


@pytest.mark.parametrize('gin_file', sorted(os.listdir(os.path.join(REPO, 'gin', 'attention'))))
def test_attention_gin_files_set_the_attention_type(gin_file):
  gin.clear_config()
  try:
    gin.add_config_file_search_path(os.path.join(REPO, 'gin'))
    gin.parse_config_files_and_bindings(
        [os.path.join(REPO, 'gin', 'models', 't5_1_1_tiny.gin'),
         os.path.join(REPO, 'gin', 'attention', gin_file)], [])
    config = gin.get_configurable('synth_jax.network.T5Config')()
    expected = gin_file[:-len('.gin')].replace('mixture_', '').replace('_', '+')
    for name in attention.names():  # undo '+' inside single names such as fixed_random
      expected = expected.replace(name.replace('_', '+'), name)
    assert config.encoder_attention == config.decoder_attention == expected
    assert config.cross_attention == 'vanilla'
  finally:
    gin.clear_config()


@pytest.mark.parametrize('attention_type', ['random', 'factorized_random', 'random+vanilla'])
def test_packed_random_fast_path_changes_no_loss_or_gradient(attention_type):
  """Random synthesizers on packed rows: the packed gather kernel equals the reference path."""
  enc, dec_in, tgt = batch(seed=6, size=3, enc_len=9, dec_len=6)
  enc, tgt, dec_in = enc.at[2, 7:].set(0), tgt.at[2].set(0), dec_in.at[2].set(0)
  packing = dict(
      encoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 2, 2, 3, 3], [1] * 9,
                                     [1, 1, 2, 2, 2, 2, 2, 0, 0]]),
      decoder_segment_ids=jnp.array([[1, 1, 2, 2, 2, 3], [1] * 6, [0] * 6]))
  config = tiny_config(encoder_attention=attention_type, decoder_attention=attention_type)
  models = [network.Transformer(config, attention_execution=e) for e in ('fast', 'reference')]
  variables = noise_variables(models[0], enc, dec_in, tgt)

  def loss(params, model):
    logits = model.apply({**variables, 'params': params}, enc, dec_in, tgt,
                         enable_dropout=False, **packing)
    return jnp.sum(jnp.where((tgt > 0)[..., None], jax.nn.log_softmax(logits), 0)[..., :7])

  (got, got_grads), (want, want_grads) = (
      jax.jit(jax.value_and_grad(functools.partial(loss, model=m)))(variables['params'])
      for m in models)
  # The kernel is taken: its custom gradient appears in the fast program only.
  programs = [str(jax.make_jaxpr(jax.grad(functools.partial(loss, model=m)))(variables['params']))
              for m in models]
  assert 'custom_vjp' in programs[0] and 'custom_vjp' not in programs[1]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('attention_type', ['random', 'random+vanilla'])
def test_an_all_padding_example_leaves_every_gradient_finite(attention_type):
  model = network.Transformer(tiny_config(encoder_attention=attention_type,
                                          decoder_attention=attention_type))
  enc, dec_in, tgt = batch(seed=3, size=3)
  enc, dec_in, tgt = enc.at[2].set(0), dec_in.at[2].set(0), tgt.at[2].set(0)
  variables = noise_variables(model, enc, dec_in, tgt)

  def loss(params):
    logits = model.apply({**variables, 'params': params}, enc, dec_in, tgt, enable_dropout=False)
    return jnp.sum(jnp.where((tgt > 0)[..., None], logits, 0) ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  for path, grad in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
