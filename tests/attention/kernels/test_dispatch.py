"""The contract of `kernels.Dispatch`: every variant, every execution, every mask form equals the
reference path (`dispatch=None`), values and gradients, and takes its kernel where it should.

A kernel that silently stopped being chosen would still pass an equality test, so each case also
records which kernels ran, against the variants this file names as fused (`FLASH`, `SHARED`).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax.attention import kernels
from synth_jax.attention import masks
from synth_jax.attention import registry
from synth_jax.attention.kernels import blockwise
from synth_jax.attention.kernels import flash
from synth_jax.attention.kernels import linear_scan
from synth_jax.attention.kernels import packed_gather
from synth_jax.attention.kernels import shared_scores
from tests import fixtures
from tests.attention import helpers

BATCH, LENGTH = 3, 6
BLOCK = 4  # blocks of 4 queries and keys: several blocks per row, the last one padded
EXECUTIONS = ('fast', 'xla', 'blockwise')
# 'auto' is 'xla' on the CPU for query-key forms plus 'blockwise' for the rest: a few variants
# that take each of its paths.
AUTO = ('neg_l2', 'hyperbolic', 'random', 'linear', 'random+vanilla')
VARIANTS = tuple(attention.names()) + ('random+vanilla', 'factorized_random+orthogonal')
# The variants a kernel computes: query.key products through `jax.nn.dot_product_attention`
# (under 'xla'), batch-shared score tables (under any execution but 'reference'). Any other
# variant must take none of the kernels `kernels_run` watches.
FLASH = {'vanilla', 'cosine', 'orthogonal', 'frozen_gaussian', 'rotary', 'neg_l2', 'dense',
         'factorized_random'}
SHARED = {'random', 'fixed_random', 'factorized_random'}
LINEAR = {'linear'}  # kernel feature maps: key sums, prefix sums when causal

# Unpacked rows pad at the end (seqio); packed rows as seqio packs them, padding last; the
# cross-attention queries (decoder) and keys (encoder) have their own lengths.
SELF_LENGTHS = [6, 4, 2]
SEGMENT_IDS = np.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 1], [1, 2, 2, 3, 3, 3]])
CROSS_QUERY_LENGTHS, CROSS_KEY_LENGTHS, CROSS_Q_LEN, CROSS_K_LEN = [5, 2, 4], [7, 6, 1], 5, 7
FORMS = ('padding', 'padding_causal', 'packed', 'packed_causal', 'cross')


def padded_tokens(lengths, total, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, 100, (len(lengths), total))
  return jnp.asarray(np.where(np.arange(total)[None] < np.asarray(lengths)[:, None], tokens, 0))


def case(form, seed=0):
  """`(mask, x_q, x_kv, bias)` of a mask form; bias `[1, heads, q, k]` for self-attention."""
  if form == 'cross':
    mask = masks.Mask.for_cross_attention(
        padded_tokens(CROSS_QUERY_LENGTHS, CROSS_Q_LEN) > 0,
        padded_tokens(CROSS_KEY_LENGTHS, CROSS_K_LEN, seed=1))
    return (mask, helpers.inputs(seed, BATCH, CROSS_Q_LEN),
            helpers.inputs(seed + 1, BATCH, CROSS_K_LEN), None)
  causal = form.endswith('causal')
  if form.startswith('packed'):
    mask = masks.Mask.for_self_attention(jnp.asarray(SEGMENT_IDS) * 7,
                                         jnp.asarray(SEGMENT_IDS), causal=causal)
  else:
    mask = masks.Mask.for_self_attention(padded_tokens(SELF_LENGTHS, LENGTH), causal=causal)
  x = helpers.inputs(seed, BATCH, LENGTH)
  return mask, x, x, helpers.random_bias(seed + 2, LENGTH, LENGTH)


def expected_kernel(member, execution, form):
  """The kernel one (non-mixture) variant takes, or None for the reference path."""
  packed = form.startswith('packed')
  if member in LINEAR:
    return 'linear_scan'
  if member in SHARED and not packed and execution != 'blockwise':
    return 'shared_scores'
  if member in FLASH and execution in ('xla', 'auto'):
    return 'flash'
  if execution in ('blockwise', 'auto'):
    return 'blockwise'
  if member in SHARED:
    return 'packed_gather'
  return None


def expected_kernels(variant, execution, form):
  return {expected_kernel(m, execution, form) for m in registry.members(variant)} - {None}


@pytest.fixture
def kernels_run(monkeypatch):
  """The names of the kernels called while the test runs."""
  called = set()

  def spy(module, function, name):
    original = getattr(module, function)

    def wrapped(*args, **kwargs):
      called.add(name)
      return original(*args, **kwargs)
    monkeypatch.setattr(module, function, wrapped)
  spy(flash, 'flash_attention', 'flash')
  spy(shared_scores, 'shared_scores_attention', 'shared_scores')
  spy(packed_gather, 'gather_within_segments', 'packed_gather')
  spy(linear_scan, 'linear_attention', 'linear_scan')
  spy(blockwise, 'blockwise_attention', 'blockwise')
  return called


def outputs_and_gradients(module, variables, mask, x_q, x_kv, bias):
  """Outputs at the valid queries; gradients of their sum of squares w.r.t. params, inputs, bias."""
  valid = np.asarray(mask.query_valid)

  def valid_outputs(params, x_q, x_kv, bias):
    out = module.apply({**variables, 'params': params}, x_q, x_kv, mask, bias)
    return jnp.where(valid[:, :, None], out, 0)

  def loss(*args):
    return jnp.sum(valid_outputs(*args) ** 2)
  args = (variables['params'], x_q, x_kv, bias)
  argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
  # One compiled program per case: op-by-op, the case's many small ops cost more.
  return jax.jit(lambda *a: (valid_outputs(*a), jax.grad(loss, argnums=argnums)(*a)))(*args)


@functools.cache
def reference_case(variant, form):
  """The case's inputs, variables, and the reference path's outputs and gradients.

  Computed once for both executions (the reference is most of each test's time).
  """
  mask, x_q, x_kv, bias = case(form)
  reference = helpers.build(variant)
  variables = helpers.noise_variables(reference, x_q, x_kv)
  return (mask, x_q, x_kv, bias, variables,
          *outputs_and_gradients(reference, variables, mask, x_q, x_kv, bias))


CASES = [(variant, execution, form)
         for variant, execution in ([(v, e) for v in VARIANTS for e in EXECUTIONS]
                                    + [(v, 'auto') for v in AUTO])
         for form in FORMS
         if not (form == 'cross' and attention.is_position_dependent(variant))]


def computed_path(variant, execution, form):
  """What a case computes: per member, the kernel and the option of `Dispatch` it reads (only
  `flash_attention` reads one, its implementation: 'xla', or JAX's choice under 'auto'; the
  block size is `BLOCK` for all), or 'reference' where no member takes a kernel."""
  path = []
  for member in registry.members(variant):
    kernel = expected_kernel(member, execution, form)
    path.append((kernel, execution) if kernel == 'flash' else kernel)
  return ('reference', form) if set(path) == {None} else (variant, form, tuple(path))


def distinct(cases):
  """The first case of each `computed_path`: cases that give the same path run the same
  functions on the same arguments (e.g. 'linear' under every execution, a random synthesizer's
  shared scores under 'fast' and 'xla', 'blockwise' and 'auto' for a variant without a fused
  kernel), and where no kernel runs the dispatch returns None and the reference itself runs."""
  seen = set()
  for variant, execution, form in cases:
    if computed_path(variant, execution, form) not in seen:
      seen.add(computed_path(variant, execution, form))
      yield variant, execution, form


def dispatched(variant, execution):
  return helpers.build(variant, dispatch=dataclasses.replace(kernels.dispatch_for(execution),
                                                             block_size=BLOCK))


COMPARED = list(distinct(CASES))


@pytest.mark.parametrize('variant,execution,form', [c for c in CASES if c not in COMPARED])
def test_a_case_that_computes_as_a_compared_one_takes_the_same_kernels(variant, execution, form,
                                                                       kernels_run):
  """Traced only: its values are those of the compared case of its `computed_path`."""
  mask, x_q, x_kv, bias = case(form)
  module = dispatched(variant, execution)
  variables = jax.eval_shape(lambda: helpers.init(helpers.build(variant), x_q, x_kv))
  jax.eval_shape(lambda v: module.apply(v, x_q, x_kv, mask, bias), variables)
  assert kernels_run == expected_kernels(variant, execution, form)


@pytest.mark.parametrize('variant,execution,form', COMPARED)
def test_dispatch_equals_the_reference_path_in_values_and_gradients(variant, execution, form,
                                                                  kernels_run):
  mask, x_q, x_kv, bias, variables, want_out, want_grads = reference_case(variant, form)
  kernels_run.clear()  # the reference takes no kernel (it has no dispatch)

  got_out, got_grads = outputs_and_gradients(dispatched(variant, execution), variables, mask,
                                             x_q, x_kv, bias)
  assert kernels_run == expected_kernels(variant, execution, form)
  np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
  got_leaves = jax.tree_util.tree_flatten_with_path(got_grads)[0]
  want_leaves = jax.tree.leaves(want_grads)
  assert len(got_leaves) == len(want_leaves)
  for (path, got), want in zip(got_leaves, want_leaves):
    # Blockwise sums in another order: tight against the leaf's own scale, not each element's.
    atol = 1e-5 if kernels_run.isdisjoint({'blockwise'}) else 5e-5 * max(1, np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol,
                               err_msg=f'gradient {jax.tree_util.keystr(path)}')


def score_shapes(variant, execution, primitive=None):
  """Shapes of the values (of `primitive`, else all) of a training step's jaxpr, causal padding."""
  mask, x, _, bias = case('padding_causal')
  module = helpers.build(variant, dispatch=kernels.dispatch_for(execution))
  variables = helpers.noise_variables(module, x)
  loss = lambda params: jnp.sum(module.apply({**variables, 'params': params}, x, x, mask,
                                             bias) ** 2)
  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(variables['params'])
  return {v.aval.shape for e in helpers.all_equations(jaxpr)
          if primitive is None or e.primitive.name == primitive for v in e.outvars}


@pytest.mark.parametrize('variant', sorted(SHARED))
def test_fast_random_synthesizers_form_no_per_example_scores(variant):
  """'fast' normalizes the shared table once: no `[batch, heads, q, k]` value, backward included."""
  per_example = (BATCH, helpers.HEADS, LENGTH, LENGTH)
  assert per_example in score_shapes(variant, 'reference')
  assert per_example not in score_shapes(variant, 'fast')


@pytest.mark.parametrize('variant', ['vanilla', 'orthogonal'])
def test_xla_query_key_attention_forms_no_score_matmul_of_its_own(variant):
  """Under 'xla' the scores are `jax.nn.dot_product_attention`'s, not the core's q.k einsum."""
  per_example = (BATCH, helpers.HEADS, LENGTH, LENGTH)
  assert per_example in score_shapes(variant, 'reference', 'dot_general')
  assert per_example not in score_shapes(variant, 'xla', 'dot_general')


ON_GPU = pytest.mark.skipif(jax.default_backend() != 'gpu', reason='cuDNN runs on NVIDIA GPUs')


@pytest.mark.parametrize('execution', ['xla', pytest.param('cudnn', marks=ON_GPU)])
@pytest.mark.parametrize('variant', ['vanilla', 'orthogonal', 'random', 'factorized_random',
                                     'random+vanilla', 'neg_l2', 'dense'])
@pytest.mark.parametrize('form', ['padding_causal', 'packed_causal'])
def test_fast_paths_in_bfloat16_stay_close_to_the_float32_reference(variant, form, execution,
                                                                     kernels_run):
  """neg_l2's extra key column is split in two bfloat16 parts, so it keeps float32's precision."""
  mask, x, _, bias = case(form, seed=13)
  variables = helpers.noise_variables(helpers.build(variant), x)
  want = helpers.build(variant).apply(variables, x, x, mask, bias)
  got = helpers.build(variant, dtype=jnp.bfloat16,
                      dispatch=kernels.dispatch_for(execution)).apply(variables, x, x, mask, bias)
  assert kernels_run == expected_kernels(variant, 'auto' if execution == 'cudnn' else execution,
                                         form)
  assert got.dtype == jnp.bfloat16
  valid = np.asarray(mask.query_valid)
  scale = float(jnp.max(jnp.abs(want)))
  np.testing.assert_allclose(np.asarray(got, np.float32)[valid], want[valid], atol=0.03 * scale)


def test_reference_execution_has_no_dispatch():
  assert kernels.dispatch_for('reference') is None
  assert kernels.dispatch_for('fast') == kernels.Dispatch(fused=None)
  assert kernels.dispatch_for('blockwise') == kernels.Dispatch(fused=None, blocked=True)
  assert kernels.dispatch_for('xla') == kernels.Dispatch(fused='xla', blocked=False)
  assert kernels.dispatch_for('auto') == kernels.Dispatch(fused='auto', blocked=True)


def test_an_unknown_execution_is_a_clear_error_listing_the_valid_ones():
  with pytest.raises(ValueError, match=r"attention_execution='cuda' is not an attention "
                                       r"execution; use one of 'reference', 'fast', "
                                       r"'blockwise', 'cudnn', 'xla', 'auto'"):
    kernels.dispatch_for('cuda')


def test_an_unknown_transformer_execution_names_the_knob():
  model = fixtures.tiny_model(attention_execution='cuda')
  tokens = jnp.ones((1, 4), jnp.int32)
  with pytest.raises(ValueError, match=r"Transformer.attention_execution='cuda' is not an "
                                       r"attention execution; use one of 'reference'"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens, tokens,
                                      enable_dropout=False))


@pytest.mark.parametrize('variant, execution, kernel', [
    ('factorized_random', 'xla', 'flash'),  # its query-key form
    ('random', 'auto', 'blockwise'),
    ('fixed_random', 'auto', 'blockwise'),
    ('random', 'xla', 'shared_scores'),  # no other path under 'xla': the table stays
])
def test_a_shared_map_larger_than_the_values_takes_another_path(variant, execution, kernel,
                                                                 kernels_run):
  """At one example of head width 1, a 6-key `[heads, q, k]` map is over 4x the values
  (`[1, k, heads, 1]`): the dispatch leaves it where another path exists, with the same values
  and gradients. (T5-base at 8192 tokens and batch 8 is such a case; the contract cases, batch 3
  of width 8, are not.)"""
  mask = masks.Mask.for_self_attention(padded_tokens([5], LENGTH), causal=True)
  x = helpers.inputs(3, batch=1, length=LENGTH)
  bias = helpers.random_bias(4, LENGTH, LENGTH)
  reference = helpers.build(variant, head_dim=1)
  variables = helpers.noise_variables(reference, x)
  want_out, want_grads = outputs_and_gradients(reference, variables, mask, x, x, bias)
  kernels_run.clear()
  module = helpers.build(variant, head_dim=1, dispatch=dataclasses.replace(
      kernels.dispatch_for(execution), block_size=BLOCK))
  got_out, got_grads = outputs_and_gradients(module, variables, mask, x, x, bias)
  assert kernels_run == {kernel}
  np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-5 * max(1, np.abs(want).max()))


@pytest.mark.parametrize('execution, variant, q_len, fits', [
    ('auto', 'random', 8, True),  # 8 = 4 x (batch 1 x head width 2): at the bound
    ('auto', 'random', 9, False),
    ('xla', 'factorized_random', 9, False),  # its query-key form is the other path
    ('xla', 'random', 9, True),  # no other path under 'xla'
    ('fast', 'factorized_random', 9, True),  # nor under 'fast'
])
def test_a_shared_map_fits_within_four_times_the_values(execution, variant, q_len, fits):
  module = helpers.build(variant)
  value = jnp.zeros((1, q_len, helpers.HEADS, 2))
  assert kernels.dispatch_for(execution).shared_map_fits(module, q_len, value) == fits
