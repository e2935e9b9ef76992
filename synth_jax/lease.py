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
trainer exits. A read that fails for another reason than a missing file is retried and then
raised, never taken for "no lease". On several hosts, process 0 holds the lease and every host
learns its verdict (one broadcast at start and at each save), so all stop together.
"""
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Optional

import numpy as np

LEASE_FILE = 'trainer.lease'


class LeaseHeldError(RuntimeError):
  """Another trainer holds MODEL_DIR."""


class LeaseLostError(RuntimeError):
  """Another trainer took MODEL_DIR over while this one ran."""


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile reads and writes gs://)
  return tf.io.gfile


def _pid_namespace() -> str:
  """This process's PID namespace: pids are comparable only within one (containers)."""
  try:
    return os.readlink('/proc/self/ns/pid')
  except OSError:
    return ''


def _on_process_0_everywhere(failed: bool) -> bool:
  """Process 0's `failed`, as every host sees it (a no-op on one host)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return failed
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def _is_process_0() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


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
    self.mine = {'host': socket.gethostname(), 'pid': os.getpid(),
                 'pid_namespace': _pid_namespace(), 'token': uuid.uuid4().hex}
    self._stop = threading.Event()
    self._thread = None
    self.lost_to = None  # the lease that replaced ours, once seen

  @property
  def _holder(self) -> bool:
    """Process 0 holds the file (asked when first needed: `held_locally` needs no jax)."""
    return _is_process_0()

  def held_locally(self) -> Optional[LeaseHeldError]:
    """For a local MODEL_DIR, the error `acquire` would raise because a live trainer holds it,
    read with plain file I/O before TensorFlow or jax is imported (the command line's early
    answer); None when it is free, unreadable or not local (`acquire` still decides)."""
    if '://' in self.path:
      return None
    try:
      with open(self.path) as f:
        lease = json.load(f)
    except (OSError, ValueError):
      return None
    return None if self.is_stale(lease) else self._held_error(lease)

  def read(self, attempts: int = 3) -> Optional[dict]:
    """The lease on disk, or None if there is none. Other read errors are retried, then
    raised: a failed read must not look like a free MODEL_DIR."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    for attempt in range(attempts):
      try:
        with _gfile().GFile(self.path) as f:
          return json.load(f)
      except tf.errors.NotFoundError:
        return None
      except (tf.errors.OpError, OSError, ValueError):
        if attempt == attempts - 1:
          raise
        time.sleep(0.5 * (attempt + 1))

  def _write(self):
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(self.path))
    temporary = f'{self.path}.{self.mine["token"]}.tmp'
    with gfile.GFile(temporary, 'w') as f:
      json.dump({**self.mine, 'heartbeat': time.time()}, f)
    gfile.rename(temporary, self.path, overwrite=True)

  def is_stale(self, lease: dict) -> bool:
    """Its heartbeat is older than the timeout, or its process, on this host and in this PID
    namespace, is gone (our own pid there is an earlier incarnation, e.g. a restarted
    container's PID 1)."""
    if time.time() - lease.get('heartbeat', 0) > self.timeout_s:
      return True
    if (lease.get('host') != self.mine['host'] or
        lease.get('pid_namespace', '') != self.mine['pid_namespace']):
      return False
    pid = int(lease.get('pid', 0))
    return pid == self.mine['pid'] or not _process_alive(pid)

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
    """Takes the lease, or raises `LeaseHeldError` if a live trainer holds it (on every host:
    process 0 decides)."""
    error = None
    if self._holder:
      try:
        self._take()
      except LeaseHeldError as held:
        error = held
    if _on_process_0_everywhere(error is not None):
      raise error or LeaseHeldError(f'process 0 found MODEL_DIR {os.path.dirname(self.path)} in '
                                    'use by another trainer (its log names it); exiting.')

  def _take(self):
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
      try:
        held = self.read()
        if held is not None and held.get('token') != self.mine['token']:
          self.lost_to = held
          return
        self._write()
      except Exception as error:  # pylint: disable=broad-except  (retried at the next beat)
        logging.warning('lease heartbeat on %s failed (%s); retrying in %.0f s', self.path,
                        error, self.heartbeat_s)

  def check(self):
    """Raises `LeaseLostError` on every host if another trainer has taken the lease over."""
    held = None
    if self._holder:
      held = self.read() if self.lost_to is None else self.lost_to
      if held is not None and held.get('token') == self.mine['token']:
        held = None
    if _on_process_0_everywhere(held is not None):
      self.lost_to = held or self.lost_to
      who = self.describe(held) if held else 'another trainer (process 0 names it)'
      raise LeaseLostError(
          f'{who} took over {os.path.dirname(self.path)} (this trainer\'s heartbeat was older '
          'than the lease timeout); this trainer stops without saving.')

  def release(self):
    """Stops the heartbeat and deletes the lease if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    if not self._holder:
      return
    try:
      held = self.read()
    except Exception:  # pylint: disable=broad-except  (unreadable: the timeout frees it)
      return
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
