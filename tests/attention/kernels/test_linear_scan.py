"""Linear attention's O(length) kernel: chunked prefix sums; the fast path equals the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax.attention import kernels
from synth_jax.attention import masks
from synth_jax.attention.kernels import linear_scan
from tests.attention import helpers

BATCH, LENGTH, FEATURES = 2, 12, 6
SEGMENTS = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3], [1, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0]])
TOKENS = np.where(SEGMENTS > 0, 5, 0)


@pytest.mark.parametrize('strict', [False, True])
@pytest.mark.parametrize('chunk_size', [1, 4, 5, 12, 32])
def test_prefix_sums_equal_the_masked_quadratic_sum(chunk_size, strict):
  """sum over valid keys j <= i (j < i if strict) of i's segment, chunks dividing L or not."""
  rng = np.random.default_rng(0)
  log_q, log_k = (rng.normal(size=(BATCH, LENGTH, helpers.HEADS, FEATURES)) for _ in range(2))
  v = rng.normal(size=(BATCH, LENGTH, helpers.HEADS, 3))
  sums, scale = linear_scan.prefix_sums(
      *(jnp.asarray(a, jnp.float32) for a in (log_q, log_k, v)), jnp.asarray(SEGMENTS),
      jnp.asarray(TOKENS > 0), chunk_size, strict=strict)
  index = np.arange(LENGTH)
  order = index[:, None] > index[None, :] if strict else index[:, None] >= index[None, :]
  visible = (order[None] & (SEGMENTS[:, :, None] == SEGMENTS[:, None, :])
             & (TOKENS > 0)[:, None, :])  # [b, i, j]
  kernel = np.einsum('bihm,bjhm->bhij', np.exp(log_q), np.exp(log_k)) * visible[:, None]
  np.testing.assert_allclose(sums * np.exp(scale)[..., None],
                             np.einsum('bhij,bjhe->bihe', kernel, v), rtol=1e-5, atol=1e-5)


def mask_of(form):
  """The mask of each form the kernel computes (self-attention over `TOKENS`, or cross)."""
  tokens = jnp.asarray(TOKENS)
  if form == 'cross_padding':
    return masks.Mask.for_cross_attention(jnp.ones((BATCH, 5), bool), tokens)
  causal = form.endswith('causal')
  segments = jnp.asarray(SEGMENTS) if form.startswith('packed') else None
  return masks.Mask.for_self_attention(tokens, segments, causal=causal)


def values_and_gradients(module, variables, mask, x_q, x_kv):
  """Outputs at valid queries and the gradients of a random projection of them w.r.t. the
  trainable params and both inputs (padded query rows may be arbitrary, so they are left out)."""
  valid = mask.query_valid[:, :, None]
  weights = helpers.inputs(9, batch=x_q.shape[0], length=x_q.shape[1])

  def outputs(params, x_q, x_kv):
    return jnp.where(valid, module.apply({**variables, 'params': params}, x_q, x_kv, mask), 0)

  loss = lambda *args: jnp.sum(outputs(*args) * weights)
  args = (variables['params'], x_q, x_kv)
  return jax.jit(lambda *a: (outputs(*a), jax.grad(loss, argnums=(0, 1, 2))(*a)))(*args)


FORMS = ('padding', 'padding_causal', 'packed', 'packed_causal', 'cross_padding')


@pytest.mark.parametrize('form,chunk_size,feature_map', [
    ('padding', 4, 'favor'), ('cross_padding', 4, 'favor'),  # no scan: the chunk is unused
    *((form, chunk, 'favor') for form in FORMS[1:4] for chunk in (4, 5)),  # 4 divides 12, 5 not
    ('padding_causal', 5, 'elu'), ('packed', 5, 'elu')])
def test_fast_path_equals_the_reference_in_values_and_gradients(form, chunk_size, feature_map):
  mask = mask_of(form)
  x_kv = helpers.inputs(0, batch=BATCH, length=LENGTH)
  x_q = helpers.inputs(1, batch=BATCH, length=5) if form.startswith('cross') else x_kv
  options = dict(feature_map=feature_map, num_features=FEATURES, chunk_size=chunk_size)
  reference = helpers.build('linear', **options)
  fast = helpers.build('linear', dispatch=kernels.Dispatch(), **options)
  assert linear_scan.applies(mask, x_q.shape[1])
  variables = helpers.init(reference, x_q, x_kv)
  want_out, want_grads = values_and_gradients(reference, variables, mask, x_q, x_kv)
  got_out, got_grads = values_and_gradients(fast, variables, mask, x_q, x_kv)
  np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(got_grads)[0],
                               jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5,
                               err_msg=f'gradient {jax.tree_util.keystr(path)}')


def training_step_shapes(module, mask, x):
  variables = helpers.init(module, x)
  loss = lambda params, x: jnp.sum(module.apply({**variables, 'params': params}, x, x, mask) ** 2)
  return helpers.traced_shapes(jax.make_jaxpr(jax.value_and_grad(loss, (0, 1)))(
      variables['params'], x))


@pytest.mark.parametrize('form', ['padding_causal', 'packed_causal', 'packed', 'padding'])
def test_fast_path_forms_no_quadratic_or_per_token_state_tensor(form):
  """No `[b, h, L, L]` scores and no `[b, L, h, m, d]` per-token sums, backward pass included;
  the chunked scan's `[b, h, C, C]` scores instead (causal and packed forms)."""
  mask, x = mask_of(form), helpers.inputs(0, batch=BATCH, length=LENGTH)
  options = dict(num_features=FEATURES, chunk_size=4)
  scores = (BATCH, helpers.HEADS, LENGTH, LENGTH)
  assert scores in training_step_shapes(helpers.build('linear', **options), mask, x)
  shapes = training_step_shapes(helpers.build('linear', dispatch=kernels.Dispatch(), **options),
                                mask, x)
  assert scores not in shapes
  for d in (helpers.HEAD_DIM, helpers.HEAD_DIM + 1):  # + 1: the normalizer's channel
    assert (BATCH, LENGTH, helpers.HEADS, FEATURES, d) not in shapes
  chunked = (BATCH, helpers.HEADS, 4, 4) in shapes
  assert chunked == (form != 'padding')


def test_masks_the_kernel_cannot_express_fall_back_to_the_reference():
  tokens = jnp.asarray(TOKENS)
  dense = masks.as_mask(masks.make_causal_mask(tokens), BATCH, LENGTH, LENGTH)
  packed_cross = masks.Mask.for_cross_attention(tokens > 0, tokens, jnp.asarray(SEGMENTS),
                                                jnp.asarray(SEGMENTS))
  step = masks.Mask.for_self_attention(tokens).at_decode_step(jnp.array(3))
  for mask in (dense, packed_cross, step):
    assert not linear_scan.applies(mask, LENGTH)
  assert not linear_scan.applies(masks.Mask.for_self_attention(tokens, causal=True), 5)
  # Through the dispatch, such a call still equals the reference.
  x = helpers.inputs(0, batch=BATCH, length=LENGTH)
  reference = helpers.build('linear')
  variables = helpers.init(reference, x)
  for mask in (dense, packed_cross):
    np.testing.assert_array_equal(
        helpers.build('linear', dispatch=kernels.Dispatch()).apply(variables, x, x, mask),
        reference.apply(variables, x, x, mask))


def test_large_inputs_stay_finite_and_equal_the_reference():
  """Log-features spread over hundreds: the per-feature key shift keeps the sums in range."""
  mask = mask_of('packed_causal')
  x = 8.0 * helpers.inputs(3, batch=BATCH, length=LENGTH)
  reference = helpers.build('linear', num_features=FEATURES, chunk_size=4)
  variables = helpers.init(reference, x)
  want, want_grads = values_and_gradients(reference, variables, mask, x, x)
  got, got_grads = values_and_gradients(
      helpers.build('linear', num_features=FEATURES, chunk_size=4, dispatch=kernels.Dispatch()),
      variables, mask, x, x)
  for leaf in jax.tree.leaves((got, got_grads)):
    assert np.all(np.isfinite(leaf))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('form', ['padding_causal', 'packed'])
def test_fast_path_in_bfloat16_stays_close_to_the_float32_reference(form):
  mask, x = mask_of(form), helpers.inputs(4, batch=BATCH, length=LENGTH)
  variables = helpers.init(helpers.build('linear'), x)
  want = helpers.build('linear').apply(variables, x, x, mask)
  got = helpers.build('linear', dtype=jnp.bfloat16, chunk_size=5,
                      dispatch=kernels.Dispatch()).apply(variables, x, x, mask)
  assert got.dtype == jnp.bfloat16
  valid = np.asarray(mask.query_valid)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got, np.float32)[valid], want[valid], atol=0.03 * scale)
