"""`synth_jax/names.py`: each tuple is the key list of the table it stands for."""
import pytest

from synth_jax import names
from synth_jax.attention import kernels
from synth_jax.benchmark import driver
from synth_jax.benchmark import flags as bench_flags
from synth_jax.diagnostics import flags
from synth_jax.diagnostics import grid
from synth_jax.diagnostics import model
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import run
from synth_jax.diagnostics import tasks


def test_each_name_list_is_its_tables_keys():
  assert kernels.EXECUTIONS == names.EXECUTIONS
  assert model.POSITIONS == names.POSITIONS
  assert tasks.TASKS == names.DIAGNOSTIC_TASKS
  assert tuple(presets.PRESETS) == names.DIAGNOSTIC_PRESETS
  assert tuple(grid.GRIDS) == names.GRIDS


def test_the_light_parsers_accept_every_name_and_refuse_others(capsys):
  for preset in (*presets.PRESETS, *grid.GRIDS):
    assert run.parse(['--preset', preset, '--attention', 'vanilla', '--out', 'x']).preset == preset
  for execution in kernels.EXECUTIONS:
    args = bench_flags.parser().parse_args(['--fused', execution])
    assert args.attention_execution == execution
  for refused in (['--preset', 'robust2'], ['--positions', 'rope'],
                  ['--attention_execution', 'flash']):
    with pytest.raises(SystemExit) as exit_:
      flags.diagnose().parse_args(['--attention', 'vanilla', '--out', 'x', *refused])
    assert exit_.value.code == 2
  assert 'invalid choice' in capsys.readouterr().err


def test_bench_types_default_to_every_registry_type():
  assert driver.parse_args([]).types == list(driver.DEFAULT_TYPES)
  assert driver.parse_args(['--types', 'vanilla, random']).types == ['vanilla', 'random']
  assert driver.parse_args(['--types', '']).types == []  # an empty list, not every type
