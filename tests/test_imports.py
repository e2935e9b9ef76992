"""The package's modules import each other without a cycle, deferred imports included."""
import pathlib

import synth_jax
from tests import import_graph


def test_the_package_import_graph_has_no_cycle():
  graph = import_graph.package_graph(pathlib.Path(synth_jax.__file__).parent)
  assert 'synth_jax.gin_flags' in graph['synth_jax.cli']  # the walker sees the package
  assert 'synth_jax.train' in graph['synth_jax.gin_flags']  # deferred imports count
  cycle = import_graph.find_cycle(graph)
  assert not cycle, f'import cycle: {" -> ".join(cycle)}; move the shared code into a module ' \
                    'both can import.'
