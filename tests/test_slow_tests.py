"""The slow end-to-end tests are skipped by a plain `pytest` and run in `.ci/run`."""
import os

import pytest

from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeItem:
  def __init__(self, name, slow):
    self.name, self.markers = name, [pytest.mark.slow.mark] if slow else []

  def get_closest_marker(self, name):
    return next((m for m in self.markers if m.name == name), None)

  def add_marker(self, marker):
    self.markers.append(marker.mark)


class FakeConfig:
  def __init__(self, markexpr=''):
    self.markexpr = markexpr

  def getoption(self, name):
    assert name == 'markexpr'
    return self.markexpr


def collect(config):
  items = [FakeItem('fast', False), FakeItem('slow', True)]
  conftest.pytest_collection_modifyitems(config, items)
  return {item.name: [m.name for m in item.markers] for item in items}, [i.name for i in items]


def test_a_plain_run_skips_the_slow_tests_and_says_how_to_run_them(monkeypatch):
  monkeypatch.delenv(conftest.RUN_SLOW_TESTS, raising=False)
  markers, order = collect(FakeConfig())
  assert order == ['slow', 'fast']  # started first where they run
  assert markers == {'fast': [], 'slow': ['slow', 'skip']}


@pytest.mark.parametrize('environment, markexpr',
                         [('1', ''), (None, 'slow'), (None, 'not slow')])
def test_the_environment_or_a_marker_expression_runs_them(monkeypatch, environment, markexpr):
  monkeypatch.delenv(conftest.RUN_SLOW_TESTS, raising=False)
  if environment:
    monkeypatch.setenv(conftest.RUN_SLOW_TESTS, environment)
  markers, _ = collect(FakeConfig(markexpr))
  assert markers == {'fast': [], 'slow': ['slow']}


def test_ci_sets_the_variable_before_the_readme_commands():
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    lines = [line.split('#')[0].strip() for line in f]
  assert f'export {conftest.RUN_SLOW_TESTS}=1' in lines
  assert lines.index(f'export {conftest.RUN_SLOW_TESTS}=1') < lines.index('pytest')
