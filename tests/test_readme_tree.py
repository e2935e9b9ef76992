"""The README's architecture tree lists exactly the package's modules, so it cannot drift.

The rule the tree follows (and this test enforces), under `## Architecture` in README.md:
- every package directory under `synth_jax/` has a line `name/  what it holds`;
- every module has a line `name.py  what it does`, one module per line, under its directory;
- a package's `__init__.py` has a line if and only if it defines a function or a class (then a
  reader looks for code there, as for `attention/kernels/__init__.py`'s Dispatch); an
  `__init__.py` that only re-exports or documents is described by its directory's line.
An entry is indented two spaces per level below `synth_jax/`; a description runs on from the
name on the same line, and may continue on lines indented further than any entry. The tree ends
at the first line that starts in column 0. Nothing here imports jax or the package.
"""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
ENTRY = re.compile(r'^(?P<indent> *)(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.py|/))(?P<rest>.*)$')
DEFINES = re.compile(r'^(?:def|class) ', re.MULTILINE)


def readme_tree(readme_text):
  """{path relative to synth_jax/: its description} for every entry of the architecture tree."""
  lines = readme_text.splitlines()
  try:
    start = lines.index('synth_jax/')
  except ValueError:
    raise AssertionError("README.md has no architecture tree: no line that is exactly 'synth_jax/'"
                         " (inside the code block under '## Architecture').") from None
  entries, open_dirs = {}, []  # open_dirs[d - 1]: the directory entry last seen at depth d
  for line in lines[start + 1:]:
    if line.startswith('```') or (line.strip() and not line.startswith(' ')):
      break
    match = ENTRY.match(line)
    depth = len(match.group('indent')) // 2 if match else 0
    if (not match or len(match.group('indent')) % 2 or depth < 1 or depth > len(open_dirs) + 1
        or (match.group('rest') and not match.group('rest').startswith(' '))):
      continue  # a description's continuation line
    del open_dirs[depth - 1:]
    path = '/'.join(open_dirs + [match.group('name')])
    entries[path] = match.group('rest').strip()
    if path.endswith('/'):
      open_dirs.append(match.group('name').rstrip('/'))
  return entries


def package_tree(package_dir):
  """The paths (relative to the package) the rule says the tree must list."""
  expected = set()
  for path in sorted(package_dir.rglob('*')):
    relative = path.relative_to(package_dir).as_posix()
    if '__pycache__' in path.parts:
      continue
    if path.is_dir() and (path / '__init__.py').exists():
      expected.add(relative + '/')
    elif path.suffix == '.py' and (path.name != '__init__.py'
                                   or DEFINES.search(path.read_text(encoding='utf-8'))):
      expected.add(relative)
  return expected


def tree_mismatch(readme_text, package_dir):
  """A message naming every missing, extra or undescribed entry; '' when the tree is right."""
  listed = readme_tree(readme_text)
  expected = package_tree(package_dir)
  missing = sorted(expected - set(listed))
  extra = sorted(set(listed) - expected)
  bare = sorted(path for path, description in listed.items() if not description)
  if not (missing or extra or bare):
    return ''
  parts = ["README.md's architecture tree ('## Architecture') does not match synth_jax/."]
  if missing:
    parts.append('Missing from the tree (add one line each, under its directory, indented two '
                 'spaces per level, as `name.py  what it does`):')
    parts += [f'  synth_jax/{path}' for path in missing]
  if extra:
    parts.append('Listed in the tree but not in the package (remove or rename the line; an '
                 '__init__.py is listed only when it defines a function or class):')
    parts += [f'  synth_jax/{path}' for path in extra]
  if bare:
    parts.append('Listed without a description (say what it does on the same line):')
    parts += [f'  synth_jax/{path}' for path in bare]
  parts.append('The rule is in tests/test_readme_tree.py\'s docstring.')
  return '\n'.join(parts)


def test_readme_tree_lists_every_module_of_the_package_and_nothing_else():
  readme = (ROOT / 'README.md').read_text(encoding='utf-8')
  message = tree_mismatch(readme, ROOT / 'synth_jax')
  assert not message, message


def test_tree_check_names_a_missing_module_an_absent_entry_and_a_bare_entry(tmp_path):
  package = tmp_path / 'synth_jax'
  (package / 'sub').mkdir(parents=True)
  (package / '__init__.py').write_text('"""Re-exports only."""\nfrom x import y\n')
  (package / 'sub' / '__init__.py').write_text('class Dispatch:\n  pass\n')
  for name in ('a.py', 'new.py', 'sub/b.py', 'sub/c.py'):
    (package / name).write_text('')
  readme = '\n'.join([
      '```', 'synth_jax/',
      '  sub/        a subpackage',
      '    __init__.py the dispatch',
      '    b.py        b, whose description',
      '                goes on: c.py is mentioned here, not listed',
      '    gone.py     a module that was removed',
      '  a.py',
      'configs/    experiments', '```'])
  sections, heading = {}, None
  for line in tree_mismatch(readme, package).splitlines():
    if line.startswith('  '):
      sections[heading].add(line.strip())
    else:
      heading = line.split(' (')[0]
      sections[heading] = set()
  assert sections['Missing from the tree'] == {'synth_jax/new.py', 'synth_jax/sub/c.py'}
  assert sections['Listed in the tree but not in the package'] == {'synth_jax/sub/gone.py'}
  assert sections['Listed without a description'] == {'synth_jax/a.py'}
  fixed = readme.replace('    gone.py     a module that was removed',
                         '    c.py        c\n  new.py      new').replace('  a.py', '  a.py  a')
  assert tree_mismatch(fixed, package) == ''
