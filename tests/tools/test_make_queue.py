"""tools/make_queue.py: a queue line per wanted part that is not yet recorded."""
import importlib.util
import os
import subprocess

from tests import fixtures

spec = importlib.util.spec_from_file_location(
    'make_queue', os.path.join(fixtures.REPO, 'tools', 'make_queue.py'))
make_queue = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_queue)

GRID_PLAN = """part 1/3: 2h.relative/mqar/vanilla (recorded)
part 2/3: 2h.relative/induction/vanilla
part 3/3: 2h.none/mqar/vanilla
"""


def test_a_grid_request_queues_the_parts_its_plan_does_not_mark_recorded(tmp_path, monkeypatch,
                                                                          capsys):
  asked = []

  def plan(argv, **kwargs):
    asked.append(argv)
    return subprocess.CompletedProcess(argv, 0, stdout=GRID_PLAN)
  monkeypatch.setattr(make_queue.subprocess, 'run', plan)
  requests = tmp_path / 'requests.txt'
  requests.write_text('G=--preset robust --attention\nrobust * $G vanilla  # all of it\n')
  assert make_queue.main([str(requests)]) == 0
  assert capsys.readouterr().out.splitlines() == [
      'robust --preset robust --attention vanilla --part 2',
      'robust --preset robust --attention vanilla --part 3']
  # The plan is asked of the request's results directory, with --skip_done, the grid preset last.
  argv = asked[0]
  assert argv[argv.index('--out') + 1] == str(tmp_path / 'robust') and '--skip_done' in argv
  assert argv[-4:] == ['--preset', 'robust', '--attention', 'vanilla']
