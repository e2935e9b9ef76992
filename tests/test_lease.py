"""One trainer per MODEL_DIR: two real trainer processes, stale and lost leases."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from synth_jax import lease as lease_lib
from synth_jax import train
from tests import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = """
import sys
from synth_jax import train
from tests import fixtures
train.train(model_dir=sys.argv[1], model=fixtures.tiny_model(),
            mixture_or_task_name=fixtures.register_copy_task(),
            task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=int(sys.argv[2]),
            log_period=1, checkpoint_period=2, keep_checkpoints=None, eval_period=0)
"""


def start_trainer(model_dir, steps):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '', 'PYTHONPATH': REPO}
  return subprocess.Popen([sys.executable, '-c', TRAINER, str(model_dir), str(steps)], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout=180):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.2)


def saved_steps(model_dir):
  directory = model_dir / 'checkpoints'
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if directory.exists() else []


def test_a_second_trainer_exits_at_once_and_a_killed_trainers_successor_takes_over(tmp_path):
  model_dir = tmp_path / 'run'
  first = start_trainer(model_dir, 100_000)
  try:
    wait_for(lambda: len(saved_steps(model_dir)) >= 2 or first.poll() is not None)
    assert first.poll() is None, first.stdout.read()
    held = json.load(open(model_dir / lease_lib.LEASE_FILE))
    assert held['pid'] == first.pid and held['host'] == socket.gethostname()

    second = start_trainer(model_dir, 10)
    out, _ = second.communicate(timeout=180)
    assert second.returncode != 0
    assert f'is in use by trainer pid {first.pid} on host {socket.gethostname()}' in out, out
    assert 'step 1' not in out  # it built nothing and trained nothing
    assert json.load(open(model_dir / lease_lib.LEASE_FILE))['token'] == held['token']
    assert first.poll() is None  # the first trainer is unharmed
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()

  killed_at = saved_steps(model_dir)[-1]
  successor = start_trainer(model_dir, killed_at + 2)
  out, _ = successor.communicate(timeout=240)
  assert successor.returncode == 0, out
  assert f'from trainer pid {first.pid}' in out and 'it is stale' in out
  assert f'Resumed from {model_dir / "checkpoints"} at step {killed_at}' in out
  assert saved_steps(model_dir)[-1] == killed_at + 2
  assert not (model_dir / lease_lib.LEASE_FILE).exists()  # released at the end


def write_lease(model_dir, host, pid, age_s):
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, lease_lib.LEASE_FILE), 'w') as f:
    json.dump({'host': host, 'pid': pid, 'token': 'other', 'heartbeat': time.time() - age_s}, f)


def test_a_fresh_lease_of_another_host_is_respected_and_a_stale_one_taken_over(tmp_path):
  write_lease(tmp_path, 'tpu-vm-7', 1234, age_s=20)
  lease = lease_lib.Lease(str(tmp_path), timeout_s=60)
  with pytest.raises(lease_lib.LeaseHeldError,
                     match=r'in use by trainer pid 1234 on host tpu-vm-7 \(last heartbeat 2\d s '
                           r'ago\).*expires 60 s after its last heartbeat'):
    lease.acquire()
  write_lease(tmp_path, 'tpu-vm-7', 1234, age_s=61)
  with lease_lib.Lease(str(tmp_path), timeout_s=60) as taken:
    assert json.load(open(taken.path))['token'] == taken.mine['token']
  assert not os.path.exists(taken.path)


def test_the_heartbeat_keeps_the_lease_fresh(tmp_path):
  with lease_lib.Lease(str(tmp_path), timeout_s=60, heartbeat_s=0.05) as held:
    first = json.load(open(held.path))['heartbeat']
    wait_for(lambda: (held.read() or {}).get('heartbeat', first) > first, timeout=10)
    held.check()


def test_a_trainer_whose_lease_was_taken_over_stops_before_saving(tmp_path):
  def usurp(step, metrics):
    del metrics
    if step == 3:
      write_lease(tmp_path, 'tpu-vm-9', 42, age_s=0)
  with pytest.raises(lease_lib.LeaseLostError, match='pid 42 on host tpu-vm-9.*without saving'):
    train.train(model_dir=str(tmp_path), model=fixtures.tiny_model(),
                mixture_or_task_name=fixtures.register_copy_task(),
                task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=6,
                log_period=100, checkpoint_period=2, eval_period=0, on_step=usurp)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
  assert json.load(open(tmp_path / lease_lib.LEASE_FILE))['host'] == 'tpu-vm-9'  # left alone


def test_our_own_pid_in_a_lease_of_this_host_is_an_earlier_incarnation(tmp_path):
  """A restarted container's trainer is often PID 1 again: its old lease is stale."""
  lease = lease_lib.Lease(str(tmp_path), timeout_s=60)
  mine = {'host': socket.gethostname(), 'pid_namespace': lease.mine['pid_namespace'],
          'heartbeat': time.time()}
  assert lease.is_stale({**mine, 'pid': os.getpid()})
  assert not lease.is_stale({**mine, 'pid': os.getppid()})  # alive
  # Another PID namespace on the same host: pids say nothing, only the heartbeat counts.
  assert not lease.is_stale({**mine, 'pid_namespace': 'pid:[1]', 'pid': 2 ** 22 + 1})


def test_a_failing_read_is_raised_not_taken_for_a_free_model_dir(tmp_path, monkeypatch):
  write_lease(tmp_path, 'tpu-vm-7', 1234, age_s=0)
  lease = lease_lib.Lease(str(tmp_path), timeout_s=60)

  class Unreadable:
    def GFile(self, *args):  # pylint: disable=invalid-name
      raise OSError('503: backend error')
  monkeypatch.setattr(lease_lib, '_gfile', Unreadable)
  monkeypatch.setattr(lease_lib.time, 'sleep', lambda seconds: None)
  with pytest.raises(OSError, match='503'):
    lease.acquire()


def test_the_heartbeat_survives_a_failed_write(tmp_path, monkeypatch):
  with lease_lib.Lease(str(tmp_path), timeout_s=60, heartbeat_s=0.05) as held:
    write = held._write  # pylint: disable=protected-access
    failures = []

    def flaky():
      if not failures:
        failures.append(1)
        raise OSError('transient')
      write()
    monkeypatch.setattr(held, '_write', flaky)
    first = json.load(open(held.path))['heartbeat']
    wait_for(lambda: failures and (held.read() or {}).get('heartbeat', first) > first, timeout=10)
    assert held._thread.is_alive()  # pylint: disable=protected-access
