"""The package's import graph read from source (`ast`), deferred imports inside functions
included: what the no-cycle tests walk."""
import ast
import pathlib


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  """`root/synth_jax/attention/core.py` -> 'synth_jax.attention.core' (packages by their dir)."""
  parts = path.relative_to(root).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(source: str, module: str, is_package: bool, known: set[str]) -> set[str]:
  """Every module `source` imports, at the top or inside a function: `from p import m` counts
  as importing p.m when that is a module in `known`, else as importing p."""
  package = module if is_package else module.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = package.rsplit('.', node.level - 1)[0] if node.level else ''
      origin = '.'.join(p for p in (base, node.module or '') if p)
      for alias in node.names:
        child = f'{origin}.{alias.name}'
        found.add(child if child in known else origin)
  return found


def package_graph(package_dir: pathlib.Path) -> dict[str, set[str]]:
  """module -> the modules under `package_dir` it imports (deferred imports included)."""
  root = package_dir.parent
  while (root / '__init__.py').exists():
    root = root.parent
  paths = {module_name(p, root): p for p in package_dir.rglob('*.py')}
  return {name: imported_modules(path.read_text(), name, path.name == '__init__.py',
                                 set(paths)) & set(paths)
          for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
  """A cycle of `graph` as a path that returns to its start; [] if there is none."""
  state = {}

  def visit(node, path):
    state[node] = 'open'
    for child in sorted(graph.get(node, ())):
      if state.get(child) == 'open':
        return path[path.index(child):] + [child]
      if child not in state and (cycle := visit(child, path + [child])):
        return cycle
    state[node] = 'done'
    return []

  for node in sorted(graph):
    if node not in state and (cycle := visit(node, [node])):
      return cycle
  return []
