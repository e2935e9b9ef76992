"""What the benchmark prints: the header before the first row, FLOPs in a unit that shows them,
and why an MFU is missing."""
from synth_jax import progress
from synth_jax.benchmark import driver
from synth_jax.benchmark import report
from synth_jax.benchmark import runner

TINY_FLOPS = 80.5e6  # a tiny step is about 80 MFLOP


def measured_row(attention_type, batch_size=8, inputs_length=32, mfu=None):
  step_time = 0.05
  return {'attention_type': attention_type, 'batch_size': batch_size,
          'inputs_length': inputs_length, 'attention_execution': None, 'error': None,
          'step_time_s': step_time, 'tokens_per_s': batch_size * 48 / step_time,
          'model_flops_per_step': TINY_FLOPS, 'achieved_tflops': TINY_FLOPS / step_time / 1e12,
          'mfu': mfu, 'peak_memory_bytes': None, 'device_kind': 'cpu'}


def test_the_header_comes_before_the_first_row_and_tiny_flops_show_in_mflop(monkeypatch, capsys):
  monkeypatch.setattr(runner, 'measure', lambda attention_type, *a, **kw: measured_row(
      attention_type))
  driver.run(['--preset', 'tiny', '--types', 'vanilla,random', '--no-isolate'])
  lines = capsys.readouterr().out.splitlines()
  first_row = next(i for i, line in enumerate(lines) if line.startswith('vanilla '))
  assert lines[0].startswith('attention type') and 0 < first_row
  assert 'MFLOP/step' in lines[0] and 'MFLOP/s' in lines[0]
  # 80.5 MFLOP a step in 50 ms: 1610.0 MFLOP/s, not 0.00 TFLOP.
  assert lines[first_row].split()[5:7] == ['80.50', '1610.0']
  assert '[rows 1/2 (50%)' in lines[first_row] and 'ETA' in lines[first_row]
  assert '[rows 2/2 (100%)' in next(line for line in lines if line.startswith('random '))
  assert lines[-1].startswith('MFU "-": no dense bf16 peak is known for cpu')


def test_the_table_unit_follows_the_largest_step_and_tflop_rows_read_as_before():
  tiny = report.results_table([measured_row('vanilla')])
  assert 'MFLOP/step' in tiny.splitlines()[0] and '80.50' in tiny.splitlines()[1]
  base = dict(measured_row('vanilla', mfu=0.4), model_flops_per_step=54.5e12,
              achieved_tflops=400.0)
  lines = report.results_table([base]).splitlines()
  assert 'TFLOP/step' in lines[0] and lines[1].split()[5:8] == ['54.50', '400.0', '40.0%']
  assert len(lines) == 2  # every MFU known: no note
  assert report.flop_unit(999e6) == 'MFLOP' and report.flop_unit(1e12) == 'TFLOP'


def test_a_terminal_gets_a_status_line_that_the_next_row_rewrites(monkeypatch, capsys):
  monkeypatch.setattr(runner, 'measure', lambda attention_type, *a, **kw: measured_row(
      attention_type))
  monkeypatch.setattr(progress, 'is_terminal', lambda stream=None: True)
  driver.run(['--preset', 'tiny', '--types', 'vanilla', '--no-isolate'])
  out = capsys.readouterr().out
  assert '\rmeasuring vanilla: rows 0/1 (0%)' in out and '\x1b[K\rvanilla ' in out
