"""One trainer per MODEL_DIR: a lease file that the running trainer keeps fresh.

`MODEL_DIR/trainer.lease` (JSON: host, pid, token, heartbeat time) is written when training
starts and rewritten every `heartbeat_s` by a background thread. A second trainer that finds a
fresh lease exits at once, before it writes anything. A lease is stale, and taken over, when its
heartbeat is older than `timeout_s` (a dead or preempted trainer on another host), or at once
when its trainer was on this host and its process is gone (kill -9). A clean exit (the end of
training, SIGTERM, an error) deletes the lease, so the launcher's restart resumes without
waiting. If another trainer takes the lease over anyway (this one was stalled past the timeout),
this one stops before its next checkpoint save instead of overwriting that trainer's.

Works on local disk and on `gs://` (`tf.io.gfile`). Two trainers starting in the same instant are
told apart by writing, waiting `settle_s` and reading back: the later write wins, the other
trainer exits.
"""
import json
import os
import socket
import threading
import time
import uuid
from typing import Optional

LEASE_FILE = 'trainer.lease'


class LeaseHeldError(RuntimeError):
  """Another trainer holds MODEL_DIR."""


class LeaseLostError(RuntimeError):
  """Another trainer took MODEL_DIR over while this one ran."""


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile reads and writes gs://)
  return tf.io.gfile


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


class Lease:
  """The lease on `model_dir`; `acquire()` it, `check()` it before writes, `release()` it."""

  def __init__(self, model_dir: str, timeout_s: float = 300.0, heartbeat_s: float = 30.0,
               settle_s: Optional[float] = None):
    self.path = os.path.join(model_dir, LEASE_FILE)
    self.timeout_s, self.heartbeat_s = timeout_s, heartbeat_s
    self.settle_s = (1.0 if '://' in model_dir else 0.05) if settle_s is None else settle_s
    self.mine = {'host': socket.gethostname(), 'pid': os.getpid(), 'token': uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread = None
    self.lost_to = None  # the lease that replaced ours, once seen

  def read(self) -> Optional[dict]:
    try:
      with _gfile().GFile(self.path) as f:
        return json.load(f)
    except Exception:  # pylint: disable=broad-except  (absent, or a write in progress)
      return None

  def _write(self):
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(self.path))
    temporary = f'{self.path}.{self.mine["token"]}.tmp'
    with gfile.GFile(temporary, 'w') as f:
      json.dump({**self.mine, 'heartbeat': time.time()}, f)
    gfile.rename(temporary, self.path, overwrite=True)

  def is_stale(self, lease: dict) -> bool:
    if time.time() - lease.get('heartbeat', 0) > self.timeout_s:
      return True
    return lease.get('host') == self.mine['host'] and not _process_alive(int(lease.get('pid', 0)))

  def describe(self, lease: dict) -> str:
    age = time.time() - lease.get('heartbeat', 0)
    return (f'trainer pid {lease.get("pid")} on host {lease.get("host")} (last heartbeat '
            f'{age:.0f} s ago)')

  def _held_error(self, lease: dict) -> LeaseHeldError:
    return LeaseHeldError(
        f'MODEL_DIR {os.path.dirname(self.path)} is in use by {self.describe(lease)}; this '
        'trainer exits without writing anything. Stop that trainer or give another MODEL_DIR. '
        f'If it is gone, its lease ({self.path}) expires {self.timeout_s:.0f} s after its last '
        'heartbeat; run again then.')

  def acquire(self):
    """Takes the lease, or raises `LeaseHeldError` if a live trainer holds it."""
    held = self.read()
    if held and held.get('token') != self.mine['token']:
      if not self.is_stale(held):
        raise self._held_error(held)
      print(f'Taking over {self.path} from {self.describe(held)}: it is stale.', flush=True)
    self._write()
    time.sleep(self.settle_s)
    held = self.read()
    if not held or held.get('token') != self.mine['token']:
      raise self._held_error(held or {})
    self._thread = threading.Thread(target=self._heartbeat, name='lease-heartbeat', daemon=True)
    self._thread.start()

  def _heartbeat(self):
    while not self._stop.wait(self.heartbeat_s):
      held = self.read()
      if held is not None and held.get('token') != self.mine['token']:
        self.lost_to = held
        return
      self._write()

  def check(self):
    """Raises `LeaseLostError` if another trainer has taken the lease over."""
    held = self.read() if self.lost_to is None else self.lost_to
    if held is not None and held.get('token') != self.mine['token']:
      self.lost_to = held
      raise LeaseLostError(
          f'{self.describe(held)} took over {os.path.dirname(self.path)} (this trainer\'s '
          'heartbeat was older than the lease timeout); this trainer stops without saving.')

  def release(self):
    """Stops the heartbeat and deletes the lease if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    held = self.read()
    if held and held.get('token') == self.mine['token']:
      try:
        _gfile().remove(self.path)
      except Exception:  # pylint: disable=broad-except  (gone already)
        pass

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
