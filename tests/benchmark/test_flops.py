"""The benchmark's FLOP count: matmuls of the traced step, on attention's reference path.

The library counts what the program computes; these tests write the count out by hand from the
shapes, per attention type, and compare.
"""
import jax
import jax.numpy as jnp
import pytest

from synth_jax import network
from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax import train_state
from synth_jax.benchmark import batches
from synth_jax.benchmark import flops
from synth_jax.benchmark import runner
from tests.benchmark.flop_formulas import closed_form


def step_counts(attention_type, preset='tiny', pack=True, attention_execution='fast',
                logits_matmul_dtype=None):
  """(model FLOPs, FLOPs of the step as executed) of the preset, traced from shapes only."""
  shapes = runner.PRESETS[preset]
  cfg = runner.model_config(preset, attention_type, shapes['inputs_length'],
                            shapes['targets_length'], logits_matmul_dtype)
  model = network.Transformer(cfg, attention_execution=attention_execution)
  batch = batches.synthetic_batch(shapes['batch_size'], shapes['inputs_length'],
                                  shapes['targets_length'], cfg.vocab_size, pack)
  mesh = partitioning.create_mesh(model_parallelism=1)
  optimizers = []

  def make_optimizer(plan):
    optimizers.append(optimizer_lib.adafactor(optimizer_lib.rsqrt_schedule(), plan))
    return optimizers[-1]

  state = jax.eval_shape(
      lambda rng: train_state.create(model, make_optimizer, batch, mesh, rng)[0],
      jax.random.key(0))
  rng = jax.random.key(1)
  return (flops.model_flops(model, optimizers[-1], state, batch, rng),
          flops.step_flops(model, optimizers[-1], state, batch, rng))


@pytest.mark.parametrize('pack', [True, False])
@pytest.mark.parametrize('attention_type', ['vanilla', 'random', 'orthogonal', 'dense',
                                            'factorized_random'])
def test_model_flops_of_the_traced_reference_step_equal_the_closed_form(attention_type, pack):
  model_flops, _ = step_counts(attention_type, pack=pack)
  assert model_flops['training'] == closed_form(attention_type, 'tiny')
  assert sum(model_flops['parts'].values()) == model_flops['training']


def test_model_flops_of_t5_base_equal_the_h100_runs_count():
  model_flops, _ = step_counts('vanilla', preset='base')
  assert model_flops['training'] == closed_form('vanilla', 'base')
  # T5-base v1.1 at 512/114, batch 128: 54,520,858,017,792 in the layers (the traced count of
  # the H100 run) plus 422,615,040 for the one-hot relative-position bias.
  assert model_flops['training'] == 54_520_858_017_792 + 422_615_040


def test_forward_flops_are_a_third_of_training_less_the_relpos_tables_input_gradient():
  model_flops, _ = step_counts('vanilla')
  parts = model_flops['parts']
  # Every matmul runs 3x (forward, dX, dW) but the bias table's one-hot product (no dX): 2x.
  relpos_forward = (parts['encoder/relpos_bias'] + parts['decoder/relpos_bias']) // 2
  assert model_flops['training'] == 3 * model_flops['forward'] - relpos_forward


def test_parts_name_the_network_modules_summed_over_layers():
  model_flops, _ = step_counts('vanilla')
  shapes, model = runner.PRESETS['tiny'], runner.model_arguments('tiny')
  batch, targets = shapes['batch_size'], shapes['targets_length']
  assert list(model_flops['parts']) == [
      'encoder/relpos_bias', 'encoder/attention', 'encoder/mlp', 'decoder/relpos_bias',
      'decoder/self_attention', 'decoder/encoder_decoder_attention', 'decoder/mlp',
      'decoder/logits_dense']
  assert model_flops['parts']['decoder/logits_dense'] == (
      3 * 2 * batch * targets * model['emb_dim'] * model['vocab_size'])
  assert model_flops['parts']['decoder/mlp'] == (
      model['num_decoder_layers'] * 3 * 3 * 2 * batch * targets * model['emb_dim']
      * model['mlp_dim'])


def test_model_flops_do_not_depend_on_the_execution_but_the_executed_count_does():
  model_fast, executed_fast = step_counts('random', pack=True)
  model_reference, executed_reference = step_counts('random', pack=True,
                                                    attention_execution='reference')
  assert model_fast == model_reference == executed_reference
  # Packed random's fast path sums its score-map gradient with a one-hot matmul per self-attention
  # layer, [max_q, batch*q] x [batch*q, heads*max_k]: work of the implementation, not the model.
  shapes, model = runner.PRESETS['tiny'], runner.model_arguments('tiny')
  one_hot = lambda length: 2 * length * shapes['batch_size'] * length * model['num_heads'] * length
  assert executed_fast['training'] - model_fast['training'] == (
      model['num_encoder_layers'] * one_hot(shapes['inputs_length'])
      + model['num_decoder_layers'] * one_hot(shapes['targets_length']))


def test_scan_bodies_count_once_per_iteration_and_conds_their_costliest_branch():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 8))
  matmul = 2 * 4 * 8 * 8

  def scanned(x):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]

  def branched(x, p):
    return jax.lax.cond(p, lambda v: v @ w @ w, lambda v: v @ w, x)

  assert flops.matmul_flops(jax.make_jaxpr(scanned)(x))['training'] == 5 * matmul
  assert flops.matmul_flops(jax.make_jaxpr(branched)(x, True))['training'] == 2 * matmul
  outer = jax.make_jaxpr(lambda a, b: jnp.einsum('i,j->ij', a, b))(jnp.ones(3), jnp.ones(4))
  assert flops.matmul_flops(outer)['training'] == 0  # no contraction: elementwise work


def test_part_of_drops_transforms_methods_and_layer_indices():
  assert flops.part_of('transpose(jvp(Transformer))/Transformer.decode/decoder/layers_1/mlp/wo'
                       ) == 'decoder/mlp'
  assert flops.part_of('jvp(Transformer)/Transformer.encode/encoder/relpos_bias'
                       ) == 'encoder/relpos_bias'
  assert flops.part_of('') == flops.OTHER


def test_peak_tflops_are_looked_up_from_the_device_kind():
  assert flops.peak_tflops_for('NVIDIA H100 80GB HBM3') == 989.0
  assert flops.peak_tflops_for('NVIDIA H100 PCIe') == 756.0
  assert flops.peak_tflops_for('TPU v5 lite') == 197.0
  assert flops.peak_tflops_for('TPU v5') == 459.0
  assert flops.peak_tflops_for('cpu') is None


def test_jitted_functions_keep_their_callers_scope():
  w = jnp.ones((8, 8))
  inner = jax.jit(lambda v: v @ w)

  def outer(x):
    with jax.named_scope('Transformer'), jax.named_scope('encoder'), jax.named_scope('mlp'):
      return inner(x)

  counts = flops.matmul_flops(jax.make_jaxpr(outer)(jnp.ones((4, 8))))
  assert counts['parts'] == {'encoder/mlp': 2 * 4 * 8 * 8}


def test_the_bfloat16_logits_matmul_counts_three_forward_products_like_float32():
  """Its custom gradient traces no dead primal product (the logits matmul counts 3x forward)."""
  counts = {dtype: step_counts('vanilla', logits_matmul_dtype=dtype)[0]['training']
            for dtype in ('float32', 'bfloat16')}
  assert counts['bfloat16'] == counts['float32'] == closed_form('vanilla', 'tiny')
