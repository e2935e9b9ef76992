"""Merges a device call's results (`tools/queue.sh`'s $OUT/diag.tgz) into a results folder, run
by run, so that calls run one after another without a commit between them lose nothing:

  python tools/merge_results.py diag.tgz results/robust-grid [logs-callN]

Each `results.json` in the archive is merged into the same path's `results.json.gz` under the
folder (its runs added to those recorded; a run in both keeps the archive's record, which
`--skip_done` would only have made if the recorded one was missing groups), and the archive's
`logs/` are copied to `FOLDER/LOGS` when LOGS is given. Prints what each file gained.
"""
import gzip
import json
import os
import shutil
import sys
import tarfile
import tempfile


def merge(archive: str, folder: str, logs: str = None):
  with tempfile.TemporaryDirectory() as work:
    with tarfile.open(archive) as tar:
      tar.extractall(work, filter='data')
    for root, _, files in sorted(os.walk(work)):
      if 'results.json' not in files:
        continue
      relative = os.path.relpath(root, work)
      with open(os.path.join(root, 'results.json')) as f:
        added = json.load(f)
      target = os.path.join(folder, relative, 'results.json.gz')
      merged, before = added, 0
      if os.path.exists(target):
        with gzip.open(target, 'rt') as f:
          merged = json.load(f)
        before = len(merged['runs'])
        merged['runs'].update(added['runs'])
        merged['commands'] += [c for c in added['commands'] if c not in merged['commands']]
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with gzip.open(target, 'wt') as f:
        json.dump(merged, f, indent=1)
      print(f'{relative}: {before} -> {len(merged["runs"])} runs')
    if logs and os.path.isdir(os.path.join(work, 'logs')):
      shutil.copytree(os.path.join(work, 'logs'), os.path.join(folder, logs), dirs_exist_ok=True)


if __name__ == '__main__':
  merge(*sys.argv[1:4])
