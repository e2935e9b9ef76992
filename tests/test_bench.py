"""The benchmark's bookkeeping: FLOP formulas, synthetic batches, the table and the JSON.

No timing is asserted: the CPU only proves that what the benchmark reports is computed right.
"""
import dataclasses
import functools
import json
import os
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import bench
from synth_jax import network
from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def closed_form_training_flops(attention_type, batch, inputs, targets, d_model, heads, head_dim,
                               d_ff, vocab, encoder_layers, decoder_layers):
  """Matmul FLOPs of a T5 v1.1 training step, written out for vanilla / random / orthogonal.

  Every matmul costs 3x its forward FLOPs in training (forward, dX, dW), except orthogonal's
  frozen W_Q / W_K, whose dW is never computed (2x).
  """
  hd = heads * head_dim

  def projection(length):  # [length, d_model] x [d_model, heads * head_dim], forward
    return 2 * batch * length * d_model * hd

  def scores(q_len, k_len):  # q.k^T or probabilities.v, forward
    return 2 * batch * heads * q_len * k_len * head_dim

  def self_attention(length):
    shared = 3 * (projection(length) * 2 + scores(length, length))  # value, out; probs.value
    if attention_type == 'vanilla':
      return shared + 3 * (projection(length) * 2 + scores(length, length))
    if attention_type == 'orthogonal':
      return shared + 2 * projection(length) * 2 + 3 * scores(length, length)
    return shared  # random: logits are rows of R, no matmul

  cross = 3 * (2 * projection(targets) + 2 * projection(inputs) + 2 * scores(targets, inputs))
  mlp = lambda length: 3 * 3 * 2 * batch * length * d_model * d_ff  # wi_0, wi_1, wo
  logits = 3 * 2 * batch * targets * d_model * vocab
  # Relative-position bias per stack: table . one_hot, forward and the table's gradient only.
  relpos = 2 * 2 * heads * 32 * (inputs ** 2 + targets ** 2)
  return relpos + (encoder_layers * (self_attention(inputs) + mlp(inputs))
          + decoder_layers * (self_attention(targets) + cross + mlp(targets)) + logits)


def closed_form(attention_type, preset, batch=None):
  shapes, model = bench.PRESETS[preset], bench.PRESETS[preset]['model']
  return closed_form_training_flops(
      attention_type, batch or shapes['batch_size'], shapes['inputs_length'],
      shapes['targets_length'], model['emb_dim'], model['num_heads'], model['head_dim'],
      model['mlp_dim'], model['vocab_size'], model['num_encoder_layers'],
      model['num_decoder_layers'])


@pytest.mark.parametrize('preset', ['tiny', 'base'])
@pytest.mark.parametrize('attention_type', ['vanilla', 'random', 'orthogonal'])
def test_model_flops_equal_the_closed_form(attention_type, preset):
  shapes = bench.PRESETS[preset]
  cfg = bench.model_config(preset, attention_type, shapes['inputs_length'],
                           shapes['targets_length'])
  flops = bench.model_flops(cfg, shapes['batch_size'], shapes['inputs_length'],
                            shapes['targets_length'])
  assert flops['training'] == closed_form(attention_type, preset)
  assert sum(flops['parts'].values()) == flops['training']
  if attention_type == 'vanilla':
    relpos_forward = flops['parts']['relpos_bias'] // 2
    assert flops['training'] == 3 * flops['forward'] - relpos_forward
    # T5-base v1.1 at 512/114, batch 128: 54,520,858,017,792 in the layers (the traced count of
    # the H100 run) plus 422,615,040 for the one-hot relative-position bias.
    assert preset != 'base' or flops['training'] == 54_520_858_017_792 + 422_615_040


def traced_step_flops(attention_type, pack, segment_slots=None):
  """`traced_matmul_flops` of the tiny preset's train step, traced from shapes (nothing runs)."""
  shapes = bench.PRESETS['tiny']
  cfg = bench.model_config('tiny', attention_type, shapes['inputs_length'],
                           shapes['targets_length'])
  if segment_slots is not None:
    cfg = dataclasses.replace(cfg, packed_segment_slots=segment_slots)
  model = network.Transformer(cfg)
  batch = bench.synthetic_batch(shapes['batch_size'], shapes['inputs_length'],
                                shapes['targets_length'], cfg.vocab_size, pack)
  mesh = partitioning.create_mesh(model_parallelism=1)
  optimizers = []

  def make_optimizer(plan):
    optimizers.append(optimizer_lib.adafactor(optimizer_lib.rsqrt_schedule(), plan))
    return optimizers[-1]

  state = jax.eval_shape(
      lambda rng: train_state.create(model, make_optimizer, batch, mesh, rng)[0],
      jax.random.key(0))
  step = functools.partial(train_state.train_step, model, optimizers[-1])
  jaxpr = jax.make_jaxpr(step)(state, batch, jax.random.key(1))
  flops = bench.model_flops(cfg, shapes['batch_size'], shapes['inputs_length'],
                            shapes['targets_length'], pack)
  return bench.traced_matmul_flops(jaxpr), flops['training'] + flops['overhead']


@pytest.mark.parametrize('attention_type', bench.DEFAULT_TYPES)
def test_analytic_flops_equal_the_dot_generals_of_the_traced_step(attention_type):
  traced, analytic = traced_step_flops(attention_type, pack=False)
  assert traced == analytic


@pytest.mark.parametrize('attention_type', ['random', 'orthogonal', 'factorized_dense',
                                            'factorized_random', 'random+vanilla'])
def test_packed_batches_cost_the_same_matmuls(attention_type):
  # factorized_random: R1 R2^T once per step, also when packed (not once per example).
  traced, analytic = traced_step_flops(attention_type, pack=True)
  assert traced == analytic


@pytest.mark.parametrize('attention_type', ['random', 'factorized_random'])
def test_packed_batches_without_segment_slots_cost_the_per_example_matmuls(attention_type):
  traced, analytic = traced_step_flops(attention_type, pack=True, segment_slots=0)
  assert traced == analytic
  _, with_slots = traced_step_flops(attention_type, pack=True)
  assert with_slots != analytic  # the two paths' overheads differ, so each count is checked


def test_synthetic_packed_batch_is_laid_out_like_the_feature_converter():
  batch = bench.synthetic_batch(6, 64, 24, vocab_size=100, pack=True, seed=3)
  assert set(batch) == {'encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions',
                        'decoder_input_tokens', 'decoder_target_tokens', 'decoder_segment_ids',
                        'decoder_positions', 'decoder_loss_weights'}
  for row in range(6):
    for side, tokens in (('encoder', 'encoder_input_tokens'), ('decoder', 'decoder_target_tokens')):
      ids, positions = batch[f'{side}_segment_ids'][row], batch[f'{side}_positions'][row]
      assert ids.max() >= 2  # several examples share the row
      np.testing.assert_array_equal(ids > 0, batch[tokens][row] > 0)
      for segment in range(1, ids.max() + 1):
        where = np.flatnonzero(ids == segment)
        np.testing.assert_array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
        np.testing.assert_array_equal(positions[where], np.arange(len(where)))
        assert batch[tokens][row, where[-1]] == 1  # EOS ends each example
        if side == 'decoder':
          targets = batch['decoder_target_tokens'][row, where]
          np.testing.assert_array_equal(batch['decoder_input_tokens'][row, where],
                                        np.append(0, targets[:-1]))
  np.testing.assert_array_equal(batch['decoder_loss_weights'], batch['decoder_target_tokens'] > 0)


def test_synthetic_unpacked_batch_has_one_padded_example_per_row():
  batch = bench.synthetic_batch(5, 40, 10, vocab_size=100, pack=False, seed=1)
  assert set(batch) == {'encoder_input_tokens', 'decoder_input_tokens', 'decoder_target_tokens',
                        'decoder_loss_weights'}
  for tokens in batch['encoder_input_tokens']:
    length = int((tokens > 0).sum())
    assert 20 <= length <= 40 and (tokens[:length] > 0).all() and tokens[length - 1] == 1


def test_peak_tflops_are_looked_up_from_the_device_kind():
  assert bench.peak_tflops_for('NVIDIA H100 80GB HBM3') == 989.0
  assert bench.peak_tflops_for('NVIDIA H100 PCIe') == 756.0
  assert bench.peak_tflops_for('TPU v5 lite') == 197.0
  assert bench.peak_tflops_for('TPU v5') == 459.0
  assert bench.peak_tflops_for('cpu') is None


def test_seq_sweep_keeps_tokens_per_batch_and_shrinks_the_batch():
  args = bench.parse_args(['--types', 'vanilla,random', '--seq_sweep'])
  assert bench.points(args) == [(t, length, 128 * 512 // length) for t in ('vanilla', 'random')
                                for length in (512, 1024, 2048, 4096)]


def test_unknown_type_fails_with_the_valid_names():
  with pytest.raises(ValueError, match='Valid types'):
    bench.parse_args(['--types', 'vanila'])


def test_out_of_memory_rows_are_retried_at_half_the_batch(monkeypatch):
  def fake_measure(attention_type, preset, batch_size, *args, **kwargs):
    fits = batch_size <= 32
    return {'attention_type': attention_type, 'batch_size': batch_size,
            'out_of_memory': not fits, 'error': None if fits else 'RESOURCE_EXHAUSTED'}

  monkeypatch.setattr(bench, 'measure', fake_measure)
  args = bench.parse_args(['--types', 'vanilla', '--no-isolate', '--halve_on_oom'])
  row = bench.run_point(args, 'vanilla', 512, 128)
  assert row['batch_size'] == 32 and row['out_of_memory_batch_sizes'] == [128, 64]


def test_segment_slots_flag_reaches_the_measured_config(monkeypatch):
  seen = []
  monkeypatch.setattr(bench, 'measure', lambda *a, **kw: seen.append(kw) or {'error': None})
  args = bench.parse_args(['--types', 'random', '--no-isolate', '--segment_slots', '0'])
  bench.run_point(args, 'random', 32, 8)
  assert seen[0]['segment_slots'] == 0
  assert bench.model_config('tiny', 'random', 32, 16, segment_slots=0).packed_segment_slots == 0
  assert bench.model_config('tiny', 'random', 32, 16).packed_segment_slots == 3  # the default


def test_logits_matmul_dtype_flag_reaches_the_measured_config(monkeypatch):
  seen = []
  monkeypatch.setattr(bench, 'measure', lambda *a, **kw: seen.append(kw) or {'error': None})
  args = bench.parse_args(['--types', 'vanilla', '--no-isolate',
                           '--logits_matmul_dtype', 'bfloat16'])
  bench.run_point(args, 'vanilla', 32, 8)
  assert seen[0]['logits_matmul_dtype'] == 'bfloat16'
  cfg = bench.model_config('tiny', 'vanilla', 32, 16, logits_matmul_dtype='bfloat16')
  assert cfg.logits_matmul_dtype == jnp.bfloat16
  assert bench.model_config('tiny', 'vanilla', 32, 16).logits_matmul_dtype == jnp.float32


def test_each_xla_flags_value_measures_every_type_in_a_worker_with_those_flags(monkeypatch):
  """Also: the worker gets the row's options (what every device run goes through)."""
  workers = []

  def fake_run(command, env, **kwargs):
    workers.append((command[command.index('--types') + 1], env.get('XLA_FLAGS')))
    commands.append(command)
    with open(command[command.index('--json') + 1], 'w') as f:
      json.dump({'rows': [{'attention_type': workers[-1][0], 'xla_flags': env.get('XLA_FLAGS'),
                           'batch_size': 128, 'inputs_length': 512, 'error': 'not measured'}]}, f)
    return subprocess.CompletedProcess(command, 0)

  commands = []
  monkeypatch.setattr(bench.subprocess, 'run', fake_run)
  monkeypatch.setenv('XLA_FLAGS', '--xla_mine')
  report = bench.main(['--types', 'vanilla,random', '--xla_flags=',
                       '--xla_flags=--xla_gpu_triton_gemm_any=true',
                       '--logits_matmul_dtype', 'bfloat16', '--segment_slots', '15'])
  for command in commands:  # the row's options reach every worker
    assert command[command.index('--logits_matmul_dtype') + 1] == 'bfloat16'
    assert command[command.index('--segment_slots') + 1] == '15'
  assert report['xla_flags'] == ['', '--xla_gpu_triton_gemm_any=true']
  expected = [('vanilla', ''), ('vanilla', '--xla_gpu_triton_gemm_any=true'),
              ('random', ''), ('random', '--xla_gpu_triton_gemm_any=true')]
  assert workers == expected
  assert [(r['attention_type'], r['xla_flags']) for r in report['rows']] == expected
  workers.clear()
  bench.main(['--types', 'vanilla'])  # no --xla_flags: the worker inherits ours
  assert workers == [('vanilla', '--xla_mine')]
  with pytest.raises(SystemExit):
    bench.parse_args(['--no-isolate', '--xla_flags='])


def test_tiny_cpu_run_reports_one_consistent_row_per_type(tmp_path):
  out = tmp_path / 'bench.json'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  # Unoptimized CPU code compiles in a fraction of the time; nothing here is timed for real.
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0').strip()
  types = ['vanilla', 'random']
  result = subprocess.run(
      [sys.executable, '-m', 'synth_jax.bench', '--preset', 'tiny', '--types', ','.join(types),
       '--steps', '2', '--warmup', '1', '--no-isolate', '--peak_tflops', '1', '--json', str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]

  report = json.loads(out.read_text())
  assert {'date', 'command', 'device_kind', 'jax_version', 'preset', 'pack', 'fused', 'steps',
          'source_sha256', 'rows'} <= set(report)
  assert report['device_kind'] == 'cpu' and report['preset'] == 'tiny' and report['pack']
  assert [row['attention_type'] for row in report['rows']] == types
  shapes = bench.PRESETS['tiny']
  for row in report['rows']:
    assert row['error'] is None
    assert row['model_flops_per_step'] == closed_form(row['attention_type'], 'tiny')
    assert row['traced_matmul_flops'] == (row['model_flops_per_step']
                                          + row['overhead_flops_per_step'])
    # Packed random: slot padding, denominators and recompute, outside the model FLOPs.
    assert (row['overhead_flops_per_step'] > 0) == (row['attention_type'] == 'random')
    # The batches the FLOPs are counted for take the slot path.
    assert row['segments_per_row_max'] <= row['packed_segment_slots']
    # Pipelined rounds (per-step means) give the step time; each-step-synced times are kept too.
    assert len(row['step_times_s']) == bench.PIPELINED_ROUNDS
    assert row['step_time_s'] == statistics.median(row['step_times_s'])
    assert len(row['synced_step_times_s']) == 2
    assert row['synced_step_time_s'] == statistics.median(row['synced_step_times_s'])
    assert row['tokens_per_step'] == shapes['batch_size'] * (
        shapes['inputs_length'] + shapes['targets_length'])
    assert row['tokens_per_s'] == pytest.approx(row['tokens_per_step'] / row['step_time_s'],
                                                rel=1e-12)
    assert row['steps_per_s'] == pytest.approx(1 / row['step_time_s'], rel=1e-12)
    achieved = row['model_flops_per_step'] / row['step_time_s'] / 1e12
    assert row['achieved_tflops'] == pytest.approx(achieved, rel=1e-12)
    assert row['mfu'] == pytest.approx(achieved / (1.0 * row['num_devices']), rel=1e-12)
    assert np.isfinite(row['loss'])

  # The closing table has its header, then exactly one line per type, in order.
  lines = result.stdout.splitlines()
  header = max(i for i, line in enumerate(lines) if line.startswith('attention type')
               and 'step ms' in line)
  table = [line.split()[0] for line in lines[header + 1:] if line.strip()]
  assert table == types
