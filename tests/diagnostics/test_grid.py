"""Robustness grids: the plan of groups, the results layout, and a grid run end to end."""
import dataclasses
import json
import os

import pytest

from synth_jax import names as flag_names
from synth_jax.diagnostics import grid
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import run
from synth_jax.diagnostics import tasks
from synth_jax.diagnostics import train

# A grid small enough for the suite: width 16, length 16, 20 steps; 2 settings x 2 seeds.
SMALL = presets.Preset(
    name='small', model=dict(width=16, num_layers=1, num_heads=2, positions='relative',
                             conv_kernel=3, fold_query_scale=False),
    train=train.TrainConfig(steps=20, batch_size=8, learning_rate=3e-3, warmup_steps=5,
                            eval_every=10, eval_examples=16),
    tasks={'mqar': tasks.Task('mqar', 16, 32, {'num_kv_pairs': 2}),
           'extrapolation': tasks.Task('mqar', 16, 32, {'num_kv_pairs': 2})},
    extrapolation_factors=(2,))
TEST_GRID = grid.Grid(name='test_grid', preset='small', num_heads=(2,),
                      positions=('relative', 'none'), learning_rates=(3e-3,), seeds=(0, 1),
                      tasks=('mqar', 'extrapolation'))


@pytest.fixture
def small_grid(monkeypatch):
  monkeypatch.setitem(presets.PRESETS, 'small', SMALL)
  monkeypatch.setitem(grid.GRIDS, 'test_grid', TEST_GRID)
  monkeypatch.setattr(flag_names, 'GRIDS', (*flag_names.GRIDS, 'test_grid'))
  return TEST_GRID


def test_the_robust_grid_spans_the_settings_the_issue_asks_for():
  robust = grid.GRIDS['robust']
  names = [robust.setting_name(s) for s in robust.settings()]
  assert len(names) == 8 and len(set(names)) == 8
  assert {'2x64.relative.lr0.005', '4x32.none.lr0.002'} <= set(names)
  assert robust.seeds == (0, 1, 2)
  assert set(robust.tasks) == {'mqar', 'induction', 'extrapolation'}
  one = robust.preset_for(grid.Setting(4, 'none', 2e-3))
  assert (one.model['num_heads'], one.model['positions'], one.train.learning_rate) == (
      4, 'none', 2e-3)
  full = presets.get('full')
  assert one.train.steps == full.train.steps and one.model['width'] == full.model['width']
  assert one.kv_pairs_sweep == () and one.width_sweep == ()


def test_a_group_holds_every_rate_and_seed_of_one_shape():
  robust = grid.GRIDS['robust']
  groups = grid.plan(robust, ['vanilla', 'random'])
  # mqar and induction per variant (extrapolation reuses induction's runs), 2 heads x 2 positions
  assert len(groups) == 2 * 2 * 2 * 2
  assert len({g.id for g in groups}) == len(groups)
  first = groups[0]
  assert first.id == '2h.relative/mqar/vanilla'
  assert [(r.seed, r.learning_rate) for r in first.runs] == [
      (0, 5e-3), (1, 5e-3), (2, 5e-3), (0, 2e-3), (1, 2e-3), (2, 2e-3)]
  induction = next(g for g in groups if g.job.task.name == 'induction')
  assert induction.job.groups == ('base', 'extrapolation')
  assert [job for part in grid.parts(robust, groups) for job in part] == groups


def test_budget_overrides_reach_every_setting_and_leave_the_rest():
  robust = dataclasses.replace(grid.GRIDS['robust'],
                               overrides=(('batch_size', 128), ('steps', 500), ('conv_kernel', 0)))
  full = presets.get('full')
  for setting in robust.settings():
    one = robust.preset_for(setting)
    assert (one.train.batch_size, one.train.steps, one.model['conv_kernel']) == (128, 500, 0)
    assert one.train.learning_rate == setting.learning_rate
    assert one.train.eval_examples == full.train.eval_examples and one.model['width'] == 128


def test_flags_a_grid_sets_itself_are_refused_with_the_fix(tmp_path):
  for flag in (['--seed', '1'], ['--learning_rate', '1e-3'], ['--positions', 'none']):
    with pytest.raises(SystemExit, match='sets that per setting'):
      run.main(['--preset', 'robust_tiny', '--attention', 'vanilla', '--out', str(tmp_path),
                *flag])


@pytest.mark.slow
def test_a_grid_run_writes_one_results_file_per_setting_and_seed(small_grid, tmp_path, capsys):
  out = tmp_path / 'grid'
  argv = ['--preset', 'test_grid', '--attention', 'vanilla,fixed_random', '--out', str(out)]
  assert run.main(argv) == 0
  for setting in ('2x8.relative.lr0.003', '2x8.none.lr0.003'):
    for seed in (0, 1):
      with open(out / setting / f'seed{seed}' / 'results.json') as f:
        results = json.load(f)
      assert results['meta']['seed'] == seed and results['meta']['setting'] == setting
      assert results['meta']['model']['positions'] == setting.split('.')[1]
      assert set(results['runs']) == {'mqar/vanilla', 'mqar/fixed_random'}
      vanilla = results['runs']['mqar/vanilla']
      assert len(vanilla['loss']) == 20 and vanilla['curve']['steps'] == [10, 20]
      assert [r['factor'] for r in vanilla['extrapolation']] == [1, 2]
      refused = results['runs']['mqar/fixed_random']['extrapolation'][1]
      assert refused['accuracy'] is None and 'exceeds' in refused['reason']
      assert vanilla['statistics']['attention'] and results['commands']
  # Seeds differ: each run has its own data and initialisation.
  losses = [json.load(open(out / '2x8.none.lr0.003' / f'seed{s}' / 'results.json'))
            ['runs']['mqar/vanilla']['loss'][0] for s in (0, 1)]
  assert losses[0] != losses[1]
  report = (out / 'grid.md').read_text()
  assert '| vanilla | **' in report and 'of 2** settings' in report
  assert os.path.exists(out / 'heatmap_mqar.png') and os.path.exists(out / 'heatmap_extrapolation.png')
  assert '4 groups of 2 runs (8 runs)' in capsys.readouterr().out  # 2 variants x 2 positions
  assert run.main(argv + ['--skip_done', '--no-draw']) == 0
  assert capsys.readouterr().out.count('already recorded, kept') == 4
  # The plan marks the recorded groups for tools/make_queue.py; without --skip_done it does not.
  assert run.main(argv + ['--plan', '--skip_done', '--jobs_per_part', '1']) == 0
  assert capsys.readouterr().out.count(' (recorded)\n') == 4
  assert run.main(argv[:-2] + ['--out', str(tmp_path / 'empty'), '--plan', '--skip_done']) == 0
  assert '(recorded)' not in capsys.readouterr().out
