"""`DIR/results.json`: the runs of one diagnostic configuration, shared by the calls that fill it.

Parts of a sweep may run one after another or at the same time on one `--out` (several processes
on one GPU: the small diagnostic models leave most of it idle). Every read-modify-write of the
file holds an exclusive lock on `DIR/results.json.lock`, and the file is replaced atomically, so
a run that finishes is never lost to another process's write and a reader never sees half a file.
"""
import contextlib
import gzip
import json
import os
from typing import Optional

# What makes two runs comparable: a results file holds one value of each.
CONFIGURATION_KEYS = ('preset', 'seed', 'model', 'train')
# Model fields added after results were first saved, with the value the older runs had: a file
# without one was written under that value (fold_query_scale: T5's convention until 2026-12-01).
ADDED_MODEL_FIELDS = {'fold_query_scale': True}


@contextlib.contextmanager
def locked(path: str):
  """Exclusive access to the results file at `path` among processes (released on exit)."""
  import fcntl  # pylint: disable=g-import-not-at-top (POSIX only; imported where it is used)
  with open(path + '.lock', 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def configuration(meta: dict, key: str):
  """`meta[key]`, the model's fields completed with `ADDED_MODEL_FIELDS` it predates."""
  value = meta.get(key)
  return {**ADDED_MODEL_FIELDS, **value} if key == 'model' and value is not None else value


def load(path: str) -> Optional[dict]:
  """The results in `path`, or in `path + '.gz'` when `path` is absent (sweeps are committed
  compressed); None if neither exists."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  if os.path.exists(path + '.gz'):
    with gzip.open(path + '.gz', 'rt') as f:
      return json.load(f)
  return None


def exists(path: str) -> bool:
  """Whether `load(path)` finds a file (`path` or `path + '.gz'`), without reading it."""
  return os.path.exists(path) or os.path.exists(path + '.gz')


def read(path: str, meta: dict) -> dict:
  """The results in `path` (`load`), which must be of `meta`'s configuration, or an empty set."""
  results = load(path)
  if results is None:
    return {'meta': meta, 'commands': [], 'runs': {}}
  if any(configuration(results['meta'], k) != configuration(meta, k)
         for k in CONFIGURATION_KEYS):
    saved = {k: results['meta'].get(k) for k in CONFIGURATION_KEYS}
    raise SystemExit(f'{path} holds results of another configuration ({saved}); '
                     'give a new --out.')
  return results


def write(results: dict, path: str):
  with open(path + '.tmp', 'w') as f:
    json.dump(results, f, indent=1)
  os.replace(path + '.tmp', path)


def _joined_groups(known, added) -> list:
  """`known` groups, then those of `added` not among them."""
  known = list(known)
  return known + [g for g in added if g not in known]


def _keep_recorded_groups(record: dict, recorded: Optional[dict]):
  """A run trained again (two parts racing for it) keeps the groups its record already had."""
  if recorded and 'job' in recorded and 'job' in record:
    record['job']['groups'] = _joined_groups(recorded['job'].get('groups', []),
                                             record['job'].get('groups', []))


def update(path: str, meta: dict, runs: dict = None, command: dict = None) -> dict:
  """Adds `runs` (id -> record) and `command` to the file under its lock; returns the whole."""
  with locked(path):
    results = read(path, meta)
    for run_id, record in (runs or {}).items():
      _keep_recorded_groups(record, results['runs'].get(run_id))
      results['runs'][run_id] = record
    if command is not None:
      results['commands'].append(command)
    write(results, path)
  return results


def reuse_recorded_run(path: str, meta: dict, run_id: str, groups, tag_only) -> bool:
  """Whether run `run_id` is in the file for every one of `groups`, so it need not run again.

  A recorded run also serves a group it lacks when that group is in `tag_only`: one that asks
  for no measurement beyond training (a sweep point equal to the base setting). Such groups are
  then added to the run's record in the file (the one write this makes); any other missing group
  (extrapolation's longer evaluations) means the run must be redone.
  """
  if not exists(path):
    return False
  with locked(path):
    results = read(path, meta)
    missing = _missing_groups(results, run_id, groups)
    if missing is None or not missing <= set(tag_only):
      return False
    if missing:
      recorded = results['runs'][run_id]['job']
      recorded['groups'] = _joined_groups(recorded.get('groups', []), sorted(missing))
      write(results, path)
    return True


def is_recorded(path: str, meta: dict, run_id: str, groups, tag_only) -> bool:
  """Whether `reuse_recorded_run` would reuse the run; reads only, without a lock (plans)."""
  if not exists(path):
    return False
  missing = _missing_groups(read(path, meta), run_id, groups)
  return missing is not None and missing <= set(tag_only)


def _missing_groups(results: dict, run_id: str, groups) -> Optional[set]:
  """The `groups` the recorded run lacks; None when the run is not recorded."""
  recorded = results['runs'].get(run_id, {}).get('job')
  return None if recorded is None else set(groups) - set(recorded.get('groups', []))


def grid_directories(out: str) -> list[str]:
  """The `OUT/<setting>/seed<N>` directories of a robustness grid (`grid.py`) that hold results,
  by setting then seed."""
  found = []
  for setting in sorted(os.listdir(out)):
    directory = os.path.join(out, setting)
    if not os.path.isdir(directory):
      continue
    for seed in sorted(os.listdir(directory), key=lambda name: (len(name), name)):
      path = os.path.join(directory, seed, 'results.json')
      if seed.startswith('seed') and (os.path.exists(path) or os.path.exists(path + '.gz')):
        found.append(os.path.join(directory, seed))
  return found
