"""The garbage collector paused around heavy imports, and what they made frozen after."""
import gc

from synth_jax import collector


class Node:
  def __init__(self):
    self.me = self  # a cycle: only the collector frees it


def test_the_block_runs_without_the_collector_and_its_objects_end_frozen():
  assert gc.isenabled()
  frozen_before = gc.get_freeze_count()
  with collector.paused():
    assert not gc.isenabled()
    kept = [Node() for _ in range(1000)]
  assert gc.isenabled()
  assert gc.get_freeze_count() - frozen_before >= len(kept)
  scanned = {id(o) for o in gc.get_objects()}  # the generations the collector scans
  assert not any(id(node) in scanned for node in kept)


def test_a_disabled_collector_stays_disabled():
  gc.disable()
  try:
    with collector.paused():
      pass
    assert not gc.isenabled()
  finally:
    gc.enable()
