"""The command: its flags, the rows it runs, the worker processes and what they are given."""
import json
import subprocess

import pytest

from synth_jax import attention
from synth_jax.benchmark import driver
from synth_jax.benchmark import runner


def test_default_types_are_every_registered_variant_and_a_mixture():
  args = driver.parse_args([])
  assert args.types == attention.names() + ['random+vanilla']


def test_seq_sweep_keeps_tokens_per_batch_and_shrinks_the_batch():
  args = driver.parse_args(['--types', 'vanilla,random', '--seq_sweep'])
  assert driver.points(args) == [(t, length, 128 * 512 // length) for t in ('vanilla', 'random')
                                 for length in (512, 1024, 2048, 4096)]


def test_unknown_type_fails_with_the_valid_names():
  with pytest.raises(ValueError, match='Valid types'):
    driver.parse_args(['--types', 'vanila'])


def test_out_of_memory_rows_are_retried_at_half_the_batch(monkeypatch):
  def fake_measure(attention_type, preset, batch_size, *args, **kwargs):
    fits = batch_size <= 32
    return {'attention_type': attention_type, 'batch_size': batch_size,
            'out_of_memory': not fits, 'error': None if fits else 'RESOURCE_EXHAUSTED'}

  monkeypatch.setattr(runner, 'measure', fake_measure)
  args = driver.parse_args(['--types', 'vanilla', '--no-isolate', '--halve_on_oom'])
  row = driver.run_point(args, 'vanilla', 512, 128)
  assert row['batch_size'] == 32 and row['out_of_memory_batch_sizes'] == [128, 64]


@pytest.mark.parametrize('flag', ['--fused', '--attention_execution'])
def test_fused_flag_sets_the_attention_execution_of_the_measured_step(monkeypatch, flag):
  seen = []
  monkeypatch.setattr(runner, 'measure', lambda *a, **kw: seen.append(kw) or {'error': None})
  args = driver.parse_args(['--types', 'vanilla', '--no-isolate', flag, 'cudnn'])
  driver.run_point(args, 'vanilla', 32, 8)
  assert seen[0]['attention_execution'] == 'cudnn'
  driver.run_point(driver.parse_args(['--types', 'vanilla', '--no-isolate']), 'vanilla', 32, 8)
  assert seen[1]['attention_execution'] is None  # the network's default
  with pytest.raises(SystemExit):
    driver.parse_args([flag, 'flash'])


def test_logits_matmul_dtype_flag_reaches_the_measured_config(monkeypatch):
  seen = []
  monkeypatch.setattr(runner, 'measure', lambda *a, **kw: seen.append(kw) or {'error': None})
  args = driver.parse_args(['--types', 'vanilla', '--no-isolate',
                            '--logits_matmul_dtype', 'bfloat16'])
  driver.run_point(args, 'vanilla', 32, 8)
  assert seen[0]['logits_matmul_dtype'] == 'bfloat16'


def test_model_parallelism_reaches_the_measured_mesh_and_the_worker(monkeypatch):
  seen = []
  monkeypatch.setattr(runner, 'measure', lambda *a, **kw: seen.append(kw) or {'error': None})
  args = driver.parse_args(['--types', 'vanilla', '--no-isolate', '--model_parallelism', '2'])
  driver.run_point(args, 'vanilla', 32, 8)
  assert seen[0]['model_parallelism'] == 2
  command = driver.worker_command(args, 'vanilla', 32, 8, '/tmp/row.json')
  assert command[command.index('--model_parallelism') + 1] == '2'


def test_each_xla_flags_value_measures_every_type_in_a_worker_with_those_flags(monkeypatch):
  """Also: the worker gets the row's options (what every device run goes through)."""
  workers, commands = [], []

  def fake_run(command, env, **kwargs):
    workers.append((command[command.index('--types') + 1], env.get('XLA_FLAGS')))
    commands.append(command)
    with open(command[command.index('--json') + 1], 'w') as f:
      json.dump({'rows': [{'attention_type': workers[-1][0], 'xla_flags': env.get('XLA_FLAGS'),
                           'batch_size': 128, 'inputs_length': 512, 'error': 'not measured'}]}, f)
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(driver.subprocess, 'run', fake_run)
  monkeypatch.setenv('XLA_FLAGS', '--xla_mine')
  report = driver.run(['--types', 'vanilla,random', '--xla_flags=',
                        '--xla_flags=--xla_gpu_triton_gemm_any=true',
                        '--logits_matmul_dtype', 'bfloat16', '--fused', 'cudnn'])
  for command in commands:  # the row's options reach every worker, which reparses them
    assert command[:3] == [driver.sys.executable, '-m', 'synth_jax.bench']
    worker = driver.parse_args(command[3:])
    assert (worker.logits_matmul_dtype, worker.attention_execution) == ('bfloat16', 'cudnn')
    assert not worker.isolate and worker.preset == 'base'
  assert report['xla_flags'] == ['', '--xla_gpu_triton_gemm_any=true']
  assert report['attention_execution'] == 'cudnn'
  expected = [('vanilla', ''), ('vanilla', '--xla_gpu_triton_gemm_any=true'),
              ('random', ''), ('random', '--xla_gpu_triton_gemm_any=true')]
  assert workers == expected
  assert [(r['attention_type'], r['xla_flags']) for r in report['rows']] == expected
  workers.clear()
  driver.run(['--types', 'vanilla'])  # no --xla_flags: the worker inherits ours
  assert workers == [('vanilla', '--xla_mine')]
  with pytest.raises(SystemExit):
    driver.parse_args(['--no-isolate', '--xla_flags='])


def test_a_failed_worker_is_a_row_with_its_exit_status(monkeypatch):
  monkeypatch.setattr(driver.subprocess, 'run',
                      lambda command, **kw: subprocess.CompletedProcess(command, 3))
  report = driver.run(['--types', 'random', '--fused', 'xla'])
  [row] = report['rows']
  assert row['error'] == 'worker exited with status 3' and not row['out_of_memory']
  assert (row['attention_type'], row['attention_execution']) == ('random', 'xla')
