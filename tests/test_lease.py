"""One trainer per MODEL_DIR, and a real trainer process through its life: a second trainer
refused, SIGTERM (a preemption notice), a dead trainer's lease taken over; stale and lost leases."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from synth_jax import lease as lease_lib
from synth_jax import train
from tests import fixtures

# Every step evaluates and the end decodes, so a preempted run that did either would show it.
# At step 3 the trainer waits for the test's go-ahead (a file), so the second trainer and the
# signal surely come while step 3 is under way.
TRAINER = """
import os, sys, time
from synth_jax import train
from tests import fixtures
model_dir, go = sys.argv[1], sys.argv[1] + '.go'
def report(step, metrics):
  print(f'step {step} done', flush=True)
  deadline = time.time() + 120
  while step == 3 and not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.05)
result = train.train(model_dir=model_dir, model=fixtures.tiny_model(),
                     mixture_or_task_name=fixtures.register_copy_task(),
                     task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=1000,
                     log_period=1000, checkpoint_period=1000, eval_period=1, eval_steps=1,
                     infer_examples=3, on_step=report)
print(f'returned at step {result["step"]}', flush=True)
"""
# From the signal to the exit, on a loaded 2-core machine: the save (asynchronous; the trainer
# waits for it), releasing the lease and the interpreter's exit. Decoding three examples or
# evaluating would not fit comfortably; 25 steps more (the old behaviour) would not at all.
EXIT_BOUND_S = 30


def start_trainer(model_dir):
  return subprocess.Popen([sys.executable, '-c', TRAINER, str(model_dir)], cwd=fixtures.REPO,
                          env=fixtures.subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def wait_for(condition, timeout=180):
  deadline = time.time() + timeout
  while not condition():
    assert time.time() < deadline, 'timed out'
    time.sleep(0.2)


@pytest.mark.slow
def test_one_trainer_process_refuses_a_second_saves_on_sigterm_and_its_dead_lease_is_taken_over(
    tmp_path, capsys):
  """One trainer process through its life (a TPU preemption notice is a SIGTERM); the successor
  finds the lease the trainer held, as a trainer killed at that moment would have left it."""
  model_dir = tmp_path / 'run'
  first = start_trainer(model_dir)
  before = []
  try:
    for line in first.stdout:
      before.append(line)
      if line.startswith('step 3 done'):
        break
    assert before and before[-1].startswith('step 3 done'), ''.join(before)
    held = json.load(open(model_dir / lease_lib.LEASE_FILE))
    assert held['pid'] == first.pid and held['host'] == socket.gethostname()

    # 1. A second trainer exits at once, having built and trained nothing.
    second = subprocess.run(
        [sys.executable, '-m', 'synth_jax.cli', 'train', '--gin_file=configs/demo.gin',
         f"--gin.MODEL_DIR='{model_dir}'"], cwd=fixtures.REPO, env=fixtures.subprocess_env(),
        capture_output=True, text=True, timeout=180, check=False)
    assert second.returncode != 0
    assert (f'is in use by trainer pid {first.pid} on host {socket.gethostname()}'
            in second.stderr), second.stderr
    assert 'step 1' not in second.stdout
    assert json.load(open(model_dir / lease_lib.LEASE_FILE))['token'] == held['token']
    assert first.poll() is None  # the first trainer is unharmed

    # 2. SIGTERM while step 3 is under way: it saves that step or the next, without evaluating
    # or decoding, and exits within the bound.
    first.send_signal(signal.SIGTERM)
    signalled = time.perf_counter()
    open(f'{model_dir}.go', 'w').close()
    after, _ = first.communicate(timeout=EXIT_BOUND_S + 60)
    exited_s = time.perf_counter() - signalled
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  output = ''.join(before) + after
  print(f'exited {exited_s:.1f} s after SIGTERM')
  assert first.returncode == 0, output
  assert exited_s < EXIT_BOUND_S, f'exited {exited_s:.1f} s after SIGTERM\n{output}'
  assert 'eval  step 2' in ''.join(before)  # evaluation was on, before the signal
  saved = int(re.search(r'SIGTERM: saved step (\d+)', after).group(1))
  assert 3 <= saved <= 3 + 1  # the last step reported before the signal, or the next one
  assert os.listdir(model_dir / 'checkpoints') == [str(saved)]
  assert f'returned at step {saved}' in after
  assert 'eval  step' not in after and 'prediction:' not in after, after
  assert not (model_dir / lease_lib.LEASE_FILE).exists()  # released on the way out

  # 3. Its pid is dead now: the lease it held, left behind, is stale and taken over at once.
  with open(model_dir / lease_lib.LEASE_FILE, 'w') as f:
    json.dump(held, f)
  capsys.readouterr()
  result = train.train(model_dir=str(model_dir), model=fixtures.tiny_model(),
                       mixture_or_task_name=fixtures.register_copy_task(),
                       task_feature_lengths=fixtures.LENGTHS, batch_size=8,
                       train_steps=saved + 2, log_period=1000, checkpoint_period=2,
                       eval_period=0, infer_examples=0)
  out = capsys.readouterr().out
  assert f'from trainer pid {first.pid}' in out and 'it is stale' in out, out
  assert f'Resumed from {model_dir / "checkpoints"} at step {saved}' in out, out
  assert result['step'] == saved + 2
  assert sorted(int(d) for d in os.listdir(model_dir / 'checkpoints'))[-1] == saved + 2
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
