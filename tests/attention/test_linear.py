"""Linear attention: FAVOR+ estimates softmax attention, elu + 1, frozen features, a recurrent
decode state instead of a key/value cache, no relative-position bias, and the network."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from synth_jax.attention import core
from synth_jax.attention import kernels
from synth_jax.attention import linear
from synth_jax.attention import masks
from tests import fixtures
from tests.attention import helpers
from tests.attention import reference


def favor_error(num_features, seeds=3, input_scale=0.25):
  """Mean |FAVOR+ probabilities - softmax(q.k / sqrt(d))| over `seeds` draws of the features."""
  x = input_scale * helpers.inputs(0, length=16)
  module = helpers.build('linear', num_features=num_features)
  variables = helpers.init(module, x)
  params = variables['params']
  q, k = (reference.project(np.asarray(x, np.float64), params[n]['kernel'], helpers.HEADS)
          for n in ('query', 'key'))
  exact = reference.softmax(np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(helpers.HEAD_DIM))
  errors = []
  for seed in range(seeds):
    features = linear.orthogonal_random_features(
        jax.random.key(100 + seed), (helpers.HEADS, num_features, helpers.HEAD_DIM))
    probs = module.apply({'params': params, core.FROZEN: {'random_features': features}}, x, x,
                         None, None, method='probabilities')
    errors.append(np.mean(np.abs(np.asarray(probs, np.float64) - exact)))
  return float(np.mean(errors))


def test_favor_estimates_softmax_attention_with_error_shrinking_in_the_feature_count():
  # Probabilities over 16 keys average 1/16 = 0.0625; measured: ~0.0042 at m=16, ~0.0013 at
  # m=256 (the Monte-Carlo rate 1/sqrt(m) predicts a factor 4).
  few, many = favor_error(16), favor_error(256)
  assert many < 0.5 * few
  assert many < 0.003


def test_random_features_are_orthogonal_blocks_with_gaussian_norms():
  heads, m, d = 3, 20, 8  # 20 rows: two full blocks of 8 and a partial one of 4
  w = np.asarray(linear.orthogonal_random_features(jax.random.key(0), (heads, m, d)), np.float64)
  norms = np.linalg.norm(w, axis=-1)
  directions = w / norms[..., None]
  for h in range(heads):
    for start in range(0, m, d):
      block = directions[h, start:start + d]
      np.testing.assert_allclose(block @ block.T, np.eye(len(block)), atol=1e-5)
  # chi(d) norms: they vary row to row, around sqrt(d), not all 1 or all sqrt(d).
  assert norms.std() > 0.2
  assert abs(np.mean(norms ** 2) - d) < 2.0


def test_random_features_live_in_the_frozen_collection_and_an_optimizer_step_leaves_them():
  module = helpers.build('linear', num_features=12)  # frozen shape [2, 12, 8] is unique
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  assert set(variables[core.FROZEN]) == {'random_features'}
  assert set(variables['params']) == {'query', 'key', 'value', 'out'}
  helpers.assert_frozen_untouched(module, variables, x,
                                  frozen_shapes=[(helpers.HEADS, 12, helpers.HEAD_DIM)])


@pytest.mark.parametrize('shape', ['self', 'cross'])
def test_elu_feature_map_matches_its_numpy_reference(shape):
  q_len, k_len = (6, 6) if shape == 'self' else (5, 7)
  module = helpers.build('linear', feature_map='elu')
  x_q, x_kv = helpers.inputs(0, length=q_len), helpers.inputs(1, length=k_len)
  variables = helpers.init(module, x_q, x_kv)
  assert core.FROZEN not in variables  # elu + 1 draws no features
  mask = masks.make_attention_mask(jnp.ones((2, q_len)),
                                   jnp.array([[1] * k_len, [1] * (k_len - 2) + [0, 0]]))
  got = module.apply(variables, x_q, x_kv, mask)
  want = reference.attention('linear', helpers.numpy_tree(variables), x_q, x_kv, helpers.HEADS,
                             np.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_an_unknown_feature_map_is_a_clear_error():
  x = helpers.inputs(0)
  with pytest.raises(ValueError, match=r"feature_map='relu' is not one of \('favor', 'elu'\)"):
    helpers.build('linear', feature_map='relu').init(jax.random.key(0), x, x)


def test_no_relative_position_bias_is_added():
  module = helpers.build('linear')
  x = helpers.inputs(1)
  variables = helpers.init(module, x)
  np.testing.assert_array_equal(module.apply(variables, x, x, None, helpers.random_bias(0, 6, 6)),
                                module.apply(variables, x, x))


def test_runs_at_lengths_beyond_any_maximum():
  module = helpers.build('linear', max_query_length=4, max_key_length=4,
                         dispatch=kernels.Dispatch())
  x = helpers.inputs(0, length=40)
  variables = helpers.init(module, helpers.inputs(0, length=4))
  mask = masks.Mask.for_self_attention(jnp.ones((2, 40), jnp.int32), causal=True)
  assert module.apply(variables, x, x, mask).shape == (2, 40, helpers.EMBED)


def decode_each_step(module, variables, x):
  """Outputs of feeding `x` one position per step after a cache-creating call; the last cache."""
  _, state = module.apply(variables, jnp.zeros_like(x), jnp.zeros_like(x), decode=True,
                          mutable=['cache'])
  cache, outputs = state['cache'], []
  for i in range(x.shape[1]):
    token = x[:, i:i + 1]
    out, state = module.apply({**variables, 'cache': cache}, token, token, decode=True,
                              mutable=['cache'])
    cache = state['cache']
    outputs.append(out[:, 0])
  return jnp.stack(outputs, 1), cache


def test_decoding_keeps_a_fixed_size_state_and_no_key_value_cache():
  module = helpers.build('linear', num_features=12)
  shapes = {}
  for length in (4, 9):
    x = helpers.inputs(0, length=length)
    _, cache = decode_each_step(module, helpers.init(module, x), x)
    assert 'cached_value' not in cache and 'cached_key' not in cache
    shapes[length] = {k: v.shape for k, v in cache.items() if k not in ('cache_index',
                                                                         'key_positions')}
  state = (2, helpers.HEADS, 12)
  assert shapes[4] == shapes[9] == {'key_value_sum': state + (helpers.HEAD_DIM,),
                                    'key_sum': state, 'key_max': state}


@pytest.mark.parametrize('name,options,scale', [
    ('linear', {'feature_map': 'elu'}, 1.0),
    ('linear', {}, 6.0),  # log-features over a range of ~100: the running maximum rescales
    ('linear+vanilla', {}, 1.0),
    ('linear+random', {}, 1.0),
])
def test_decode_matches_the_full_causal_forward(name, options, scale):
  module = helpers.build(name, **options)
  x = scale * helpers.inputs(0, length=6)
  variables = helpers.init(module, x)
  full = helpers.build(name, dispatch=kernels.Dispatch(), **options).apply(
      variables, x, x, masks.Mask.for_self_attention(jnp.ones((2, 6), jnp.int32), causal=True))
  stepped, _ = decode_each_step(module, variables, x)
  assert np.all(np.isfinite(stepped))
  np.testing.assert_allclose(stepped, full, rtol=1e-4, atol=1e-5)


def test_a_dense_mask_at_a_decode_step_is_a_clear_error():
  module = helpers.build('linear')
  x = helpers.inputs(0)
  variables = helpers.init(module, x)
  _, state = module.apply(variables, x, x, decode=True, mutable=['cache'])
  token = x[:, :1]
  with pytest.raises(ValueError, match='cannot take a dense mask'):
    module.apply({**variables, **state}, token, token, jnp.ones((2, 1, 1, 6)), decode=True,
                 mutable=['cache'])


# -- in the network ----------------------------------------------------------------------------
def test_a_linear_network_has_no_relative_position_table_and_trains():
  model = fixtures.tiny_model('linear')
  rng = np.random.default_rng(0)
  enc = jnp.asarray(rng.integers(1, 300, (2, 12)))
  tgt = jnp.asarray(rng.integers(1, 300, (2, 8)))
  enc, tgt = enc.at[1, 9:].set(0), tgt.at[1, 6:].set(0)
  dec_in = jnp.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  variables = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), enc, dec_in, tgt,
                                                   enable_dropout=False))())
  assert 'relpos_bias' not in variables['params']['encoder']
  assert 'relpos_bias' not in variables['params']['decoder']
  vanilla = jax.eval_shape(lambda: fixtures.tiny_model('vanilla').init(
      jax.random.key(0), enc, dec_in, tgt, enable_dropout=False))
  assert 'relpos_bias' in vanilla['params']['encoder']  # what the check above would see

  def loss(params):
    logits = model.apply({**variables, 'params': params}, enc, dec_in, tgt, enable_dropout=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, tgt)
    return jnp.sum(jnp.where(tgt > 0, losses, 0)) / jnp.sum(tgt > 0)

  optimizer = optax.adam(3e-3)
  params, state = variables['params'], optimizer.init(variables['params'])
  step = jax.jit(jax.value_and_grad(loss))
  first, _ = step(params)
  for _ in range(5):
    value, grads = step(params)
    assert np.isfinite(value)
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert step(params)[0] < first


def test_packed_network_loss_and_gradients_equal_on_the_fast_and_reference_paths():
  rng = np.random.default_rng(1)
  enc = jnp.asarray(rng.integers(1, 300, (2, 10))).at[1, 8:].set(0)
  tgt = jnp.asarray(rng.integers(1, 300, (2, 7))).at[1, 6:].set(0)
  dec_in = jnp.pad(tgt[:, :-1], ((0, 0), (1, 0)))
  packing = dict(encoder_segment_ids=jnp.array([[1] * 4 + [2] * 6, [1] * 3 + [2] * 5 + [0] * 2]),
                 decoder_segment_ids=jnp.array([[1] * 3 + [2] * 4, [1] * 2 + [2] * 4 + [0]]))
  dec_in = dec_in.at[0, 3].set(0).at[1, 2].set(0)  # each packed target starts with 0
  models = [fixtures.tiny_model('linear', attention_execution=e) for e in ('fast', 'reference')]
  # Any values do (shapes only: real initialization is the test above's).
  shapes = jax.eval_shape(lambda: nn.unbox(models[0].init(
      jax.random.key(0), enc, dec_in, tgt, enable_dropout=False, **packing)))
  variables = fixtures.noise_like(shapes, rng)

  def loss(params, model):
    logits = model.apply({**variables, 'params': params}, enc, dec_in, tgt, enable_dropout=False,
                         **packing)
    return jnp.sum(jnp.where((tgt > 0)[..., None], jax.nn.log_softmax(logits), 0)[..., :9])

  (got, got_grads), (want, want_grads) = (
      jax.jit(jax.value_and_grad(functools.partial(loss, model=m)))(variables['params'])
      for m in models)
  # The kernel is taken: the prefix-sum scan is in the fast program only.
  scans = [{e.primitive.name for e in helpers.all_equations(jax.make_jaxpr(
      functools.partial(loss, model=m))(variables['params']))} >= {'scan'} for m in models]
  assert scans == [True, False]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
