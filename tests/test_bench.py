"""`python -m synth_jax.bench` end to end on the CPU: a consistent row per type, JSON, table.

No timing is asserted: the CPU only proves that what the benchmark reports is computed right.
"""
import json
import statistics
import subprocess
import sys

import numpy as np
import pytest

from synth_jax import cli
from synth_jax.benchmark import runner
from tests import fixtures
from tests.benchmark.flop_formulas import closed_form

REPO = fixtures.REPO


@pytest.mark.slow
def test_tiny_cpu_run_reports_one_consistent_row_per_type(tmp_path):
  out = tmp_path / 'bench.json'
  env = fixtures.subprocess_env()  # nothing here is timed for real
  types = ['vanilla', 'random']
  result = subprocess.run(
      [sys.executable, '-m', 'synth_jax.bench', '--preset', 'tiny', '--types', ','.join(types),
       '--steps', '2', '--warmup', '1', '--no-isolate', '--peak_tflops', '1', '--json', str(out)],
      cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]

  report = json.loads(out.read_text())
  assert {'date', 'command', 'device_kind', 'jax_version', 'preset', 'pack',
          'attention_execution', 'steps', 'source_sha256', 'rows'} <= set(report)
  assert report['device_kind'] == 'cpu' and report['preset'] == 'tiny' and report['pack']
  assert 'synth_jax/benchmark/flops.py' in report['source_sha256']
  assert [row['attention_type'] for row in report['rows']] == types
  shapes = runner.PRESETS['tiny']
  for row in report['rows']:
    assert row['error'] is None and row['attention_execution'] == 'fast'
    assert row['model_flops_per_step'] == closed_form(row['attention_type'], 'tiny')
    assert row['traced_matmul_flops'] == (row['model_flops_per_step']
                                          + row['overhead_flops_per_step'])
    # Packed random's fast path adds a one-hot matmul for its score-map gradient.
    assert (row['overhead_flops_per_step'] > 0) == (row['attention_type'] == 'random')
    # Pipelined rounds (per-step means) give the step time; each-step-synced times are kept too.
    assert len(row['step_times_s']) == runner.PIPELINED_ROUNDS
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

  # The header comes first, rows stream in under it; a tiny step's FLOPs show in MFLOP.
  lines = result.stdout.splitlines()
  assert lines[0].startswith('attention type') and 'MFLOP/step' in lines[0]
  assert lines[1].split()[0] == types[0]
  shown = float(lines[1].split()[5])
  assert shown > 1 and shown == pytest.approx(report['rows'][0]['model_flops_per_step'] / 1e6,
                                              abs=0.005)
  # The closing table has its header, then exactly one line per type, in order.
  header = max(i for i, line in enumerate(lines) if line.startswith('attention type')
               and 'step ms' in line)
  table = [line.split()[0] for line in lines[header + 1:] if line.strip()]
  assert table == types


def test_synth_jax_bench_prints_the_benchmarks_own_help(capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(['bench', '--help'])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: synth-jax bench')
  for flag in ('--preset', '--seq_sweep', '--halve_on_oom', '--xla_flags'):
    assert flag in out
