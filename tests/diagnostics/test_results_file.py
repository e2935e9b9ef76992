"""`results.json` shared by parts running at the same time: nothing written is lost."""
import json
import multiprocessing
import os

import pytest

from synth_jax.diagnostics import jobs
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import results_file
from synth_jax.diagnostics import run

META = {'preset': 'tiny', 'seed': 0, 'model': {'width': 8}, 'train': {'steps': 1}}


def _add_runs(path, worker, count):
  for i in range(count):
    results_file.update(path, META, runs={f'task/{worker}/{i}': {'final_accuracy': i / count}})


def test_concurrent_writers_keep_every_run(tmp_path):
  path = str(tmp_path / 'results.json')
  context = multiprocessing.get_context('spawn')
  workers = [context.Process(target=_add_runs, args=(path, w, 25)) for w in range(3)]
  for worker in workers:
    worker.start()
  for worker in workers:
    worker.join(timeout=120)
    assert worker.exitcode == 0
  with open(path) as f:
    runs = json.load(f)['runs']
  assert sorted(runs) == sorted(f'task/{w}/{i}' for w in range(3) for i in range(25))
  assert runs['task/2/5'] == {'final_accuracy': 0.2}
  assert not os.path.exists(path + '.tmp')


def test_commands_accumulate_and_runs_replace_by_id(tmp_path):
  path = str(tmp_path / 'results.json')
  results_file.update(path, META, command={'argv': ['a']})
  results_file.update(path, META, runs={'x': {'v': 1}}, command={'argv': ['b']})
  results = results_file.update(path, META, runs={'x': {'v': 2}})
  assert [c['argv'] for c in results['commands']] == [['a'], ['b']]
  assert results['runs'] == {'x': {'v': 2}}


def test_another_configuration_is_refused_and_left_untouched(tmp_path):
  path = str(tmp_path / 'results.json')
  results_file.update(path, META, runs={'x': {'v': 1}})
  before = open(path).read()
  with pytest.raises(SystemExit, match="another configuration.*give a new --out"):
    results_file.update(path, {**META, 'seed': 1}, runs={'y': {}})
  assert open(path).read() == before


def test_a_recorded_run_serves_a_tag_only_group_but_not_one_that_measures_more(tmp_path):
  path = str(tmp_path / 'results.json')
  results_file.update(path, META, runs={'mqar/v': {'job': {'groups': ['base']}}})
  reuse = results_file.reuse_recorded_run
  assert not reuse(path, META, 'mqar/w', ['base'], ['base', 'width'])
  assert reuse(path, META, 'mqar/v', ['base', 'width'], ['base', 'width'])
  assert results_file.read(path, META)['runs']['mqar/v']['job']['groups'] == ['base', 'width']
  assert not reuse(path, META, 'mqar/v', ['base', 'extrapolation'], ['base', 'width'])
  assert results_file.read(path, META)['runs']['mqar/v']['job']['groups'] == ['base', 'width']


def test_a_run_trained_again_keeps_the_groups_already_recorded(tmp_path):
  """Two parts racing for one run: the second write must not drop a tag the first one added."""
  path = str(tmp_path / 'results.json')
  results_file.update(path, META, runs={'mqar/v': {'v': 1, 'job': {'groups': ['base', 'width']}}})
  results_file.update(path, META, runs={'mqar/v': {'v': 2, 'job': {'groups': ['kv_pairs']}}})
  recorded = results_file.read(path, META)['runs']['mqar/v']
  assert recorded['v'] == 2 and recorded['job']['groups'] == ['base', 'width', 'kv_pairs']


def test_a_file_from_before_a_model_field_existed_reads_as_its_old_value(tmp_path):
  path = str(tmp_path / 'results.json')
  results_file.update(path, META, runs={'x': {'v': 1}})  # META's model predates the field
  folded = {**META, 'model': {**META['model'], 'fold_query_scale': True}}
  assert results_file.read(path, folded)['runs'] == {'x': {'v': 1}}
  with pytest.raises(SystemExit, match='another configuration'):
    results_file.read(path, {**META, 'model': {**META['model'], 'fold_query_scale': False}})


def test_a_compressed_results_file_is_read_when_the_plain_one_is_absent(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'results.json')
  results_file.update(path, META, runs={'x': {'v': 1}})
  with open(path, 'rb') as plain, gzip.open(path + '.gz', 'wb') as packed:
    packed.write(plain.read())
  os.remove(path)
  assert results_file.read(path, META)['runs'] == {'x': {'v': 1}}


def test_report_only_redraws_from_a_compressed_file_without_writing_it_out(tmp_path, capsys):
  import gzip  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'diag'
  out.mkdir()
  meta = jobs.metadata(presets.get('tiny'), 0, 'fast')
  with gzip.open(out / 'results.json.gz', 'wt') as f:
    json.dump({'meta': meta, 'commands': [], 'runs': {}}, f)
  assert run.main(['--preset', 'tiny', '--attention', 'vanilla', '--out', str(out),
                   '--report_only']) == 0
  assert (out / 'report.md').exists() and not (out / 'results.json').exists()


def test_fold_query_scale_flag_selects_the_results_of_that_convention(tmp_path):
  """A results file from before the flag existed holds T5's folded convention: only
  `--fold_query_scale` opens it, and the default (the scale in the logits) is refused."""
  out = tmp_path / 'diag'
  out.mkdir()
  meta = jobs.metadata(presets.get('tiny'), 0, 'fast')
  del meta['model']['fold_query_scale']
  with open(out / 'results.json', 'w') as f:
    json.dump({'meta': meta, 'commands': [], 'runs': {}}, f)
  args = ['--preset', 'tiny', '--attention', 'vanilla', '--out', str(out), '--report_only']
  with pytest.raises(SystemExit, match='another configuration'):
    run.main(args)
  assert run.main(args + ['--fold_query_scale']) == 0
  assert (out / 'report.md').exists()
