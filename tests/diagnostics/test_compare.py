"""`diagnose-compare`: one table of runs across results files that differ in a setting."""
import gzip
import json

import pytest

from synth_jax import cli
from synth_jax.diagnostics import compare


def meta(rate, seed=0):
  return {'preset': 'full', 'seed': seed, 'model': {'width': 128},
          'train': {'steps': 2000, 'learning_rate': rate}}


def write(directory, meta_, runs, compressed=False):
  directory.mkdir()
  results = {'meta': meta_, 'commands': [],
             'runs': {k: {'final_accuracy': v} for k, v in runs.items()}}
  if compressed:
    with gzip.open(directory / 'results.json.gz', 'wt') as f:
      json.dump(results, f)
  else:
    (directory / 'results.json').write_text(json.dumps(results))
  return str(directory)


def test_columns_are_named_by_the_settings_that_differ():
  assert compare.column_names([meta(5e-3), meta(2e-3)]) == [
      'train.learning_rate=0.005', 'train.learning_rate=0.002']
  assert compare.column_names([meta(5e-3, 0), meta(2e-3, 1)]) == [
      'seed=0, train.learning_rate=0.005', 'seed=1, train.learning_rate=0.002']
  # A file from before fold_query_scale reads as folded, so it differs from one without folding.
  unfolded = meta(5e-3)
  unfolded['model'] = {'width': 128, 'fold_query_scale': False}
  assert compare.column_names([meta(5e-3), unfolded]) == [
      'model.fold_query_scale=True', 'model.fold_query_scale=False']
  with pytest.raises(SystemExit, match='same configuration'):
    compare.column_names([meta(5e-3), meta(5e-3)])


def test_rows_hold_each_files_accuracy_the_best_column_and_the_solved_count():
  runs = [{'mqar/a': {'final_accuracy': 0.95}, 'mqar/b': {'final_accuracy': 0.2}},
          {'mqar/a': {'final_accuracy': 0.5}, 'induction/a': {'final_accuracy': 0.99}},
          {'mqar/a': {'final_accuracy': 0.91}, 'mqar/b': {'final_accuracy': 0.3}}]
  runs[0]['mqar/kv=16/a'] = {'final_accuracy': 0.0}
  runs[0]['mqar/kv=4/a'] = {'final_accuracy': 0.0}
  assert compare.rows(runs) == [
      ['mqar/a', [0.95, 0.5, 0.91], 0, 2, 3],
      ['mqar/b', [0.2, None, 0.3], None, 0, 2],  # solved nowhere: no best setting
      ['mqar/kv=4/a', [0.0, None, None], None, 0, 1],  # sweep points by value, not as text
      ['mqar/kv=16/a', [0.0, None, None], None, 0, 1],
      ['induction/a', [None, 0.99, None], 1, 1, 1]]
  assert [row[0] for row in compare.rows(runs, tasks=['induction'])] == ['induction/a']
  assert [row[0] for row in compare.rows(runs, min_files=2)] == ['mqar/a', 'mqar/b']


def test_the_best_column_is_none_when_nothing_solved_it_or_the_top_ties():
  assert compare.best_column([0.91, 0.99, None]) == 1
  assert compare.best_column([0.0004, 0.0001]) is None
  assert compare.best_column([0.9996, 1.0, 0.5]) is None  # both show as 1.000
  assert compare.best_column([None, None]) is None


def test_the_command_writes_the_table_from_plain_and_compressed_files(tmp_path, capsys):
  first = write(tmp_path / 'rate5', meta(5e-3), {'mqar/vanilla': 0.996, 'mqar/random': 0.01})
  second = write(tmp_path / 'rate2', meta(2e-3), {'mqar/vanilla': 0.5}, compressed=True)
  out = tmp_path / 'compare.md'
  assert cli.main(['diagnose-compare', first, second, '--out', str(out)]) == 0
  text = out.read_text()
  assert f'- `train.learning_rate=0.005`: {first} (2 runs)' in text
  assert ('| mqar/vanilla | 0.996 | 0.500 | `train.learning_rate=0.005` | 1 of 2 |') in text
  assert 'mqar/random' not in text  # in one file only
  assert compare.main([first, second, '--all_runs']) == 0
  assert ('| mqar/random | 0.010 | - | - | 0 of 1 |'
          in capsys.readouterr().out)
  assert compare.main([first, second, '--tasks', 'induction']) == 0
  assert 'mqar/' not in capsys.readouterr().out


def test_a_directory_without_results_is_a_clear_error(tmp_path, capsys):
  first = write(tmp_path / 'a', meta(5e-3), {'mqar/vanilla': 0.9})
  with pytest.raises(SystemExit):
    compare.main([first, str(tmp_path)])
  assert 'has no results.json(.gz)' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main([first])
  assert 'at least two results directories' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    compare.main([first, first, '--tasks', 'copy'])
  assert "unknown task 'copy'; tasks: mqar, induction" in capsys.readouterr().err
