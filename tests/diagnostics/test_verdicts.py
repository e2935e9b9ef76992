"""Verdicts over a grid: seeds -> setting by majority, settings -> holds / fails / depends; the
grid's results.csv."""
import csv
import json

from synth_jax.diagnostics import claims
from synth_jax.diagnostics import compare
from synth_jax.diagnostics import verdicts


def run_record(task, variant, accuracy, extrapolated=None):
  record = {'final_accuracy': accuracy, 'chance': 0.01, 'grad_norm': [1.0] * 20,
            'job': {'task': task, 'variant': variant, 'groups': ['base']}}
  if extrapolated is not None:
    record['job']['groups'].append('extrapolation')
    record['extrapolation'] = [{'factor': 1, 'accuracy': accuracy},
                               {'factor': 4, 'accuracy': extrapolated}]
  return record


def write_grid(root, accuracies):
  """accuracies: setting -> seed -> {variant: mqar accuracy}; induction runs carry the
  extrapolation at 4L (vanilla keeps 0.95 only in the settings named 'keep*')."""
  for setting, seeds in accuracies.items():
    for seed, by_variant in seeds.items():
      directory = root / setting / f'seed{seed}'
      directory.mkdir(parents=True)
      runs = {f'mqar/{v}': run_record('mqar', v, a) for v, a in by_variant.items()}
      runs['induction/vanilla'] = run_record(
          'induction', 'vanilla', 0.99, 0.95 if setting.startswith('keep') else 0.2)
      meta = {'preset': 'full', 'seed': seed, 'model': {'num_heads': 2},
              'train': {'steps': 2000, 'batch_size': 64, 'learning_rate': 5e-3},
              'device': 'cpu', 'grid': 'test', 'setting': setting}
      (directory / 'results.json').write_text(
          json.dumps({'meta': meta, 'commands': [], 'runs': runs}))


def test_a_setting_takes_what_most_of_its_seeds_give():
  assert verdicts.setting_solves(2, 3) and not verdicts.setting_solves(1, 3)
  assert not verdicts.setting_solves(1, 2)  # a tie is not "most"
  assert verdicts.majority(['confirmed', 'confirmed', 'refuted']) == claims.CONFIRMED
  assert verdicts.majority(['confirmed', 'refuted', 'inconclusive']) == claims.INCONCLUSIVE


def test_solved_counts_and_verdicts_over_the_grid(tmp_path):
  solves, fails = {'vanilla': 0.99, 'random': 0.1}, {'vanilla': 0.99, 'random': 0.95}
  grid = {f'keep{i}': {0: solves, 1: solves, 2: fails} for i in range(4)}
  grid['lost'] = {0: fails, 1: fails, 2: solves}
  write_grid(tmp_path, grid)
  cells = verdicts.load(str(tmp_path))
  assert len(cells) == 15 and verdicts.settings(cells) == ['keep0', 'keep1', 'keep2', 'keep3',
                                                            'lost']
  table = verdicts.seeds_solving(cells, 'mqar')
  assert table['vanilla']['keep0'] == (3, 3) and table['random']['keep0'] == (1, 3)
  assert table['random']['lost'] == (2, 3)
  extrapolated = verdicts.seeds_solving(cells, 'extrapolation')
  assert extrapolated['vanilla']['keep1'] == (3, 3) and extrapolated['vanilla']['lost'] == (0, 3)
  by_claim = {v.claim: v for v in verdicts.claim_verdicts(cells)}
  recall = by_claim['Synthesizers cannot do in-context associative recall']
  # confirmed in the 4 keep settings (2 of 3 seeds), refuted in 'lost': 4 of 5 = 80% -> holds
  assert recall.verdict == verdicts.HOLDS_VERDICT
  assert recall.settings_with(claims.REFUTED) == ['lost']
  assert by_claim['Orthogonal frozen-QK handles any length'].verdict == verdicts.NOT_TESTED

  write_grid(tmp_path / 'split', {'a': {0: solves}, 'b': {0: fails}, 'c': {0: solves}})
  recall = {v.claim: v for v in verdicts.claim_verdicts(verdicts.load(
      str(tmp_path / 'split')))}['Synthesizers cannot do in-context associative recall']
  assert recall.verdict == verdicts.DEPENDS  # 2 of 3 settings: neither side has 80%
  nowhere = {'vanilla': 0.3, 'random': 0.1}  # vanilla solves nothing: nothing to compare
  write_grid(tmp_path / 'undecided', {'a': {0: nowhere}, 'b': {0: nowhere}})
  recall = {v.claim: v for v in verdicts.claim_verdicts(verdicts.load(
      str(tmp_path / 'undecided')))}['Synthesizers cannot do in-context associative recall']
  assert recall.verdict == verdicts.UNDECIDED


def test_the_report_names_the_deciding_settings_and_draws_a_heatmap_per_task(tmp_path):
  solves, fails = {'vanilla': 0.99, 'random': 0.1}, {'vanilla': 0.99, 'random': 0.95}
  write_grid(tmp_path, {'keep': {0: solves}, 'lost': {0: fails}})
  assert 'grid.md, ' in verdicts.write(str(tmp_path))
  report = (tmp_path / 'grid.md').read_text()
  assert '| random | **1 of 2** settings | 0/1 | 1/1 |' in report
  assert '| vanilla | **2 of 2** settings | 1/1 | 1/1 |' in report
  assert 'confirmed in 1 of 2: keep; refuted in 1 of 2: lost' in report
  assert '**depends on the setting**' in report
  assert (tmp_path / 'heatmap_mqar.png').stat().st_size > 0


def test_the_grid_csv_has_a_row_per_run_of_every_setting_and_seed(tmp_path):
  solves, fails = {'vanilla': 0.99, 'random': 0.1}, {'vanilla': 0.99, 'random': 0.95}
  write_grid(tmp_path, {'keep.2x64.relative.lr0.005': {0: solves, 1: fails},
                        '4x32.none.lr0.002': {2: fails}})
  assert 'results.csv and 3 heatmaps' in verdicts.write(str(tmp_path))
  with open(tmp_path / 'results.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  # 3 cells (setting, seed) x 3 runs (mqar vanilla and random, induction vanilla).
  assert len(rows) == 9
  cells = {(r['setting'], r['seed'], r['task'], r['variant']): r for r in rows}
  assert cells['keep.2x64.relative.lr0.005', '1', 'mqar', 'random']['final_accuracy'] == '0.95'
  assert cells['4x32.none.lr0.002', '2', 'mqar', 'random']['final_accuracy'] == '0.95'
  assert cells['keep.2x64.relative.lr0.005', '0', 'mqar', 'random'] == {
      'variant': 'random', 'task': 'mqar', 'setting': 'keep.2x64.relative.lr0.005', 'seed': '0',
      'final_accuracy': '0.1', 'steps_to_90': '', 'chance': '0.01'}


def test_compare_reads_a_grid_as_its_settings_and_seeds(tmp_path, capsys):
  write_grid(tmp_path, {'keep': {0: {'vanilla': 0.99}, 1: {'vanilla': 0.5}}})
  assert compare.main([str(tmp_path), '--tasks', 'mqar']) == 0
  text = capsys.readouterr().out
  assert f'- `seed=0`: {tmp_path}/keep/seed0 (2 runs)' in text
  assert '| mqar/vanilla | 0.990 | 0.500 | `seed=0` | 1 of 2 |' in text
