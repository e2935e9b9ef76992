"""Merges a device call's results (`tools/queue.sh`'s $OUT/diag.tgz) into a results folder, run
by run, so that calls run one after another without a commit between them lose nothing:

  python tools/merge_results.py diag.tgz results/robust-grid [logs-callN]

Each `results.json` in the archive is merged into the same path's `results.json.gz` under the
folder as `results_file.update` merges a part's runs: the configurations must agree (else it
stops, naming the file), a run in both takes the archive's record with the groups the recorded
one already had, and each file is replaced only once written whole. The archive's `logs/` are
copied to `FOLDER/LOGS` when LOGS is given. Prints what each file gained.
"""
import gzip
import json
import os
import shutil
import sys
import tarfile
import tempfile

from synth_jax.diagnostics import results_file


def merge_file(added_path: str, target: str) -> tuple[int, int]:
  """Adds the runs of `added_path` (a results.json) to `target` (a results.json.gz) as
  `results_file.update` adds a part's runs: the configurations must agree, and a run in both
  keeps the groups its recorded copy had. The target is replaced only once it is written whole.
  Returns the runs before and after."""
  with open(added_path) as f:
    added = json.load(f)
  with tempfile.TemporaryDirectory() as work:
    path = os.path.join(work, 'results.json')
    before = 0
    if os.path.exists(target):
      with gzip.open(target, 'rt') as f, open(path, 'w') as out:
        recorded = json.load(f)
        json.dump(recorded, out)
      before = len(recorded['runs'])
    try:
      merged = results_file.update(path, added['meta'], runs=added['runs'])
    except SystemExit as mismatch:  # its message names the temporary copy
      raise SystemExit(f'{target}: {mismatch}') from None
    merged['commands'] += [c for c in added['commands'] if c not in merged['commands']]
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with gzip.open(target + '.tmp', 'wt') as f:
      json.dump(merged, f, indent=1)
    os.replace(target + '.tmp', target)
  return before, len(merged['runs'])


def merge(archive: str, folder: str, logs: str = None):
  with tempfile.TemporaryDirectory() as work:
    with tarfile.open(archive) as tar:
      tar.extractall(work, filter='data')
    for root, _, files in sorted(os.walk(work)):
      if 'results.json' in files:
        relative = os.path.relpath(root, work)
        before, after = merge_file(os.path.join(root, 'results.json'),
                                   os.path.join(folder, relative, 'results.json.gz'))
        print(f'{relative}: {before} -> {after} runs')
    if logs and os.path.isdir(os.path.join(work, 'logs')):
      shutil.copytree(os.path.join(work, 'logs'), os.path.join(folder, logs), dirs_exist_ok=True)


if __name__ == '__main__':
  merge(*sys.argv[1:4])
