"""tools/merge_results.py: a device call's results merged run by run, nothing recorded lost."""
import gzip
import importlib.util
import json
import os
import tarfile

import pytest

from tests import fixtures

spec = importlib.util.spec_from_file_location(
    'merge_results', os.path.join(fixtures.REPO, 'tools', 'merge_results.py'))
merge_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(merge_results)

META = {'preset': 'full', 'seed': 0, 'train': {'steps': 2000}}


def record(groups, accuracy):
  return {'job': {'groups': groups}, 'final_accuracy': accuracy}


def archive(tmp_path, runs, meta=META, commands=('call 2',)):
  """A diag.tgz holding `robust/s/seed0/results.json` and a log."""
  source = tmp_path / 'source'
  (source / 'robust' / 's' / 'seed0').mkdir(parents=True)
  (source / 'logs').mkdir()
  (source / 'logs' / 'slot1.log').write_text('queue line 1 end 300 s rc 0\n')
  with open(source / 'robust' / 's' / 'seed0' / 'results.json', 'w') as f:
    json.dump({'meta': meta, 'commands': list(commands), 'runs': runs}, f)
  path = tmp_path / 'diag.tgz'
  with tarfile.open(path, 'w:gz') as tar:
    tar.add(source, arcname='.')
  return str(path)


def recorded(folder, runs):
  target = folder / 'robust' / 's' / 'seed0' / 'results.json.gz'
  target.parent.mkdir(parents=True)
  with gzip.open(target, 'wt') as f:
    json.dump({'meta': META, 'commands': ['call 1'], 'runs': runs}, f)
  return target


def test_runs_are_added_and_a_stale_copy_keeps_the_recorded_groups(tmp_path):
  folder = tmp_path / 'results'
  target = recorded(folder, {'mqar/vanilla': record(['base', 'sweep_kv'], 0.95)})
  stale_and_new = {'mqar/vanilla': record(['base'], 0.95), 'mqar/topk': record(['base'], 0.99)}
  merge_results.merge(archive(tmp_path, stale_and_new), str(folder), 'logs-call2')
  with gzip.open(target, 'rt') as f:
    merged = json.load(f)
  assert merged['runs']['mqar/vanilla']['job']['groups'] == ['base', 'sweep_kv']
  assert merged['runs']['mqar/topk'] == record(['base'], 0.99)
  assert merged['commands'] == ['call 1', 'call 2'] and merged['meta'] == META
  assert (folder / 'logs-call2' / 'slot1.log').read_text().startswith('queue line 1')


def test_results_of_another_configuration_are_refused_and_the_file_kept(tmp_path):
  folder = tmp_path / 'results'
  target = recorded(folder, {'mqar/vanilla': record(['base'], 0.95)})
  before = target.read_bytes()
  other = {**META, 'train': {'steps': 999}}
  with pytest.raises(SystemExit, match='results.json.gz: .* another configuration'):
    merge_results.merge(archive(tmp_path, {'mqar/topk': record(['base'], 0.9)}, other),
                        str(folder))
  assert target.read_bytes() == before


def test_a_write_cut_short_leaves_the_recorded_file_whole(tmp_path, monkeypatch):
  folder = tmp_path / 'results'
  target = recorded(folder, {'mqar/vanilla': record(['base'], 0.95)})
  before = target.read_bytes()
  real_open = gzip.open

  class Interrupted(Exception):
    pass

  def failing_open(path, mode='rb', **kwargs):
    opened = real_open(path, mode, **kwargs)
    if 'w' in mode:
      def write(_):
        raise Interrupted  # as a Ctrl-C or a full disk in the middle of the file
      opened.write = write
    return opened
  monkeypatch.setattr(merge_results.gzip, 'open', failing_open)
  with pytest.raises(Interrupted):
    merge_results.merge(archive(tmp_path, {'mqar/topk': record(['base'], 0.9)}), str(folder))
  assert target.read_bytes() == before
