"""Several processes train as one: `synth-jax train` as 2 processes of 2 CPU devices each (one
global 2x2 (data, model) mesh, gloo collectives over loopback) equals it as 1 process of 4 devices
(this pytest process), through a SIGTERM to one process and a resume; a killed process ends the
other within a bound; the coordination flags are checked before anything is built; each process
keeps its rows of the one-process batches."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import gin
import jax
import numpy as np
import pytest

from synth_jax import checkpoints
from synth_jax import cli
from synth_jax import data
from synth_jax import multihost
from synth_jax import partitioning
from synth_jax import train
from synth_jax import train_state
from tests import fixtures
from tests import multihost_process

REPO = fixtures.REPO
PROCESS = os.path.join(REPO, 'tests', 'multihost_process.py')
# The tiny T5 cut to 1+1 layers (width 32) on the copy task, unpacked (one compiled step).
RUN = ['--gin_file=models/t5_1_1_tiny.gin', '--gin_file=runs/train.gin',
       f"--gin.MIXTURE_OR_TASK_NAME='{multihost_process.SCORED_COPY_TASK}'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", '--gin.BATCH_SIZE=8',
       '--gin.VOCAB_SIZE=384', '--gin.synth_jax.network.T5Config.max_encoder_length=16',
       '--gin.synth_jax.network.T5Config.max_decoder_length=16',
       *fixtures.ONE_LAYER_FLAGS,
       '--gin.synth_jax.train.train.pack=False', '--gin.synth_jax.train.train.eval_steps=1',
       '--gin.synth_jax.train.train.log_period=1']
# Evaluations at steps 3, 6, ..., with the task's metric on 4 decoded examples.
FLAGS = ['--gin.EVAL_PERIOD=3', '--gin.synth_jax.train.train.metric_examples=4']
# A process whose peer died in a collective with it exits at once (gloo reports the closed
# connection); the heartbeat timeout is the bound where no collective tells it.
HEARTBEAT_TIMEOUT_S = 10
EXIT_BOUND_S = HEARTBEAT_TIMEOUT_S
LOSS = re.compile(r'^process (\d) step (\d+) loss (\S+)$')


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


class Processes:
  """The processes of one run of `tests/multihost_process.py` (a context: on leaving it, those
  still running are killed), their output collected as it comes (all of it once left)."""

  def __init__(self, model_dir, *flags, count=2, linger=''):
    self.args = [f"--gin.MODEL_DIR='{model_dir}'", *flags,
                 f'--coordinator_address=127.0.0.1:{free_port()}', f'--num_processes={count}',
                 f'--heartbeat_timeout_s={HEARTBEAT_TIMEOUT_S}']
    self.env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_') or 'CACHE' in k}
    self.env.update(LINGER=linger, PYTHONUNBUFFERED='1')
    self.count = count
    self.output = [[] for _ in range(count)]
    self.processes = []
    self.readers = []

  def __enter__(self):
    try:
      for index in range(self.count):
        self.processes.append(subprocess.Popen(
            [sys.executable, PROCESS, '2', 'train', *RUN, *self.args, f'--process_id={index}'],
            cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        self.readers.append(threading.Thread(target=self._collect, args=(index,), daemon=True))
        self.readers[-1].start()
    except BaseException:
      self.close()
      raise
    return self

  def __exit__(self, *exc):
    self.close()

  def _collect(self, index):
    for line in self.processes[index].stdout:
      self.output[index].append(line.rstrip('\n'))

  def wait(self, timeout_s: float = 240) -> list[int]:
    return [process.wait(timeout_s) for process in self.processes]

  def wait_for_step(self, index: int, step: int, timeout_s: float = 240):
    """Until process `index` has reported `step`'s loss."""
    deadline = time.monotonic() + timeout_s
    while step not in self.losses(index):
      if self.processes[index].poll() is not None or time.monotonic() > deadline:
        raise AssertionError(f'process {index} did not report step {step}\n{self.text()}')
      time.sleep(0.05)

  def close(self):
    """Kills those still running; returns once every line they printed has been collected."""
    for process in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()
    for reader in self.readers:
      reader.join(timeout=30)

  def losses(self, index: int) -> dict[int, float]:
    found = [LOSS.match(line) for line in self.output[index]]
    return {int(m.group(2)): float(m.group(3)) for m in found if m}

  def text(self) -> str:
    return '\n'.join(f'--- process {i}\n' + '\n'.join(lines) for i, lines in enumerate(self.output))


def one_process(model_dir, flags, monkeypatch, capsys) -> tuple[dict[int, float], list[str]]:
  """The same run in this process (4 devices): its losses by step and its output lines."""
  losses = {}

  class Recording(train._StepMetrics):  # pylint: disable=protected-access
    def __init__(self, manager, on_step):
      super().__init__(manager, lambda step, metrics: losses.update({step: metrics['loss']}))

  monkeypatch.setattr(train, '_StepMetrics', Recording)
  multihost_process.register_scored_copy_task()
  capsys.readouterr()
  assert cli.main(['train', *RUN, f"--gin.MODEL_DIR='{model_dir}'", *flags]) == 0
  return losses, capsys.readouterr().out.splitlines()


@pytest.fixture(autouse=True)
def _clear_gin():
  """The in-process run leaves its gin bindings of `train` behind; later tests in this worker
  call `train.train` with some arguments unbound, so they must not see them."""
  yield
  gin.clear_config()


def reports(lines: list[str]) -> list[str]:
  """What evaluation and decoding print, without the time taken."""
  return [re.sub(r'  \([0-9.]+ s\)$', '', line) for line in lines
          if line.startswith(('eval  step', 'input:', 'target:', 'prediction:'))]


def params_at(model_dir, step: int):
  """The parameters of `model_dir`'s checkpoint `step`, read by this one process, for the model
  gin binds now (the last run's)."""
  model = gin.get_configurable('synth_jax.network.Transformer')()
  dataset = data.Dataset(multihost_process.SCORED_COPY_TASK, fixtures.LENGTHS, 8, pack=False)
  abstract = train_state.abstract_variables(model, dataset.example_batch(),
                                            partitioning.create_mesh())
  variables, _ = checkpoints.read_variables(str(model_dir), abstract, step=step)
  return jax.device_get(variables['params'])


@pytest.mark.slow
def test_two_processes_train_as_one_through_a_sigterm_a_resume_and_a_killed_peer(
    tmp_path, monkeypatch, capsys):
  started = time.perf_counter()
  several, alone = tmp_path / 'two_processes', tmp_path / 'one_process'
  # 1. From step 1, evaluating (and decoding, for the task's metric) at step 3; SIGTERM to
  # process 1 while step 4 is under way: both save step 5 and exit.
  go = tmp_path / 'go'
  with Processes(several, *FLAGS, '--gin.TRAIN_STEPS=100', linger=f'4:{go}') as run:
    run.wait_for_step(1, 4)
    run.processes[1].send_signal(signal.SIGTERM)
    time.sleep(1.5)  # jax's preemption notice reaches process 0 through the coordinator
    go.touch()
    assert run.wait() == [0, 0], run.text()
  first = run.text()
  assert sorted(run.losses(0)) == [1, 2, 3, 4, 5] and run.losses(1) == run.losses(0), first
  for output in run.output:
    assert f'SIGTERM: saved step 5 to {several / "checkpoints"}; exiting.' in output, first
  assert os.listdir(several / 'checkpoints') == ['5'], first  # one checkpoint, written once
  assert 'process 0 writes the run config' in run.output[0], first
  assert 'process 1 writes the run config' not in run.output[1], first
  phase_one = run

  # 2. Resumed at step 6 (the loss one process has there); process 1 killed after that step:
  # process 0 says why and exits within the bound, leaving no lease behind. The same run in
  # this process (steps 1-6, saving step 5 to compare) is made while the two start.
  # The pair trains on meanwhile: TRAIN_STEPS is far beyond any step it reaches before the kill
  # (it must still be running then), and before its first periodic save (1000).
  with Processes(several, *FLAGS, '--gin.TRAIN_STEPS=100000') as run:
    expected, lines = one_process(
        alone, [*FLAGS, '--gin.TRAIN_STEPS=6', '--gin.CHECKPOINT_PERIOD=5'], monkeypatch, capsys)
    run.wait_for_step(1, 6)
    assert run.processes[0].poll() is None and run.processes[1].poll() is None, run.text()
    run.processes[1].kill()
    killed = time.perf_counter()
    status = run.processes[0].wait(EXIT_BOUND_S + 60)
    exited_s = time.perf_counter() - killed
  second = run.text()
  np.testing.assert_allclose([phase_one.losses(0)[s] for s in range(1, 6)],
                             [expected[s] for s in range(1, 6)], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               params_at(several, 5), params_at(alone, 5))
  evaluated = [line for line in reports(lines) if line.startswith('eval  step 3')]
  assert len(evaluated) == 2 and 'exact_match' in evaluated[1], '\n'.join(lines)
  assert reports(phase_one.output[0]) == evaluated and reports(phase_one.output[1]) == [], first
  print(f'process 0 exited {exited_s:.1f} s after process 1 was killed; the test took '
        f'{time.perf_counter() - started:.0f} s')
  np.testing.assert_allclose(run.losses(1)[6], expected[6], rtol=1e-5)
  assert status == multihost.LOST_PEER_STATUS and exited_s < EXIT_BOUND_S, second
  assert any(line.startswith('synth-jax train: process 0 of 2 lost another process (')
             for line in run.output[0]), second
  assert not os.path.exists(several / 'trainer.lease'), second


def test_each_process_keeps_its_rows_of_the_one_process_batch_of_the_local_corpus():
  lengths, task = {'inputs': 32, 'targets': 8}, 'synth_jax_local_span_corruption'
  alone = data.Dataset(task, lengths, 8, seed=1).train_batches(start_step=2)
  shares = [data.Dataset(task, lengths, 8, seed=1, rows=slice(4 * i, 4 * i + 4))
            for i in range(2)]
  assert [share.batch_size for share in shares] == [4, 4]
  streams = [share.train_batches(start_step=2) for share in shares]
  for _ in range(2):  # steps 3 and 4
    batch, mine = next(alone), [next(stream) for stream in streams]
    for feature, rows in batch.items():
      np.testing.assert_array_equal(np.concatenate([m[feature] for m in mine]), rows)
    assert not np.array_equal(mine[0]['encoder_input_tokens'], mine[1]['encoder_input_tokens'])


def test_one_process_feeds_every_row_of_a_batch_the_data_axis_divides():
  assert partitioning.process_rows(partitioning.create_mesh(), 8) == slice(0, 8)
  with pytest.raises(ValueError, match=r'BATCH_SIZE=6 must be divisible by the data-parallel '
                     r'size 4'):
    partitioning.process_rows(partitioning.create_mesh(model_parallelism=1), 6)


def test_coordination_comes_from_flags_or_the_environment_or_jax_discovers_it():
  explicit = multihost.Coordination('127.0.0.1:8476', 2, 1, multihost.DEFAULT_HEARTBEAT_TIMEOUT_S)
  assert multihost.coordination('127.0.0.1:8476', '2', '1', environ={}) == explicit
  environ = {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:8476', 'JAX_NUM_PROCESSES': '2',
             'JAX_PROCESS_ID': '1'}
  assert multihost.coordination(environ=environ) == explicit
  assert multihost.coordination('[::1]:9', '1', '0', '7', environ={}) == multihost.Coordination(
      '[::1]:9', 1, 0, 7)
  assert multihost.coordination(environ={}) is None  # one process: nothing to join
  assert multihost.coordination(discover=True, environ={}) == multihost.Coordination()  # TPU slice


# Each mistake (flags, environment) and the start of its one line.
MISTAKES = [
    (['--num_processes=2'], {},
     '--coordinator_address and --process_id (or JAX_COORDINATOR_ADDRESS and JAX_PROCESS_ID) '
     'missing: give --coordinator_address, --num_processes and --process_id together'),
    (['--multihost', '--coordinator_address=127.0.0.1:8476'], {'JAX_PROCESS_ID': '1'},
     '--num_processes (or JAX_NUM_PROCESSES) missing'),
    (['--coordinator_address=localhost', '--num_processes=2', '--process_id=0'], {},
     "--coordinator_address='localhost' (or JAX_COORDINATOR_ADDRESS) must be HOST:PORT"),
    (['--coordinator_address=127.0.0.1:8476', '--num_processes=two', '--process_id=0'], {},
     "--num_processes='two' must be an integer >= 1"),
    (['--coordinator_address=127.0.0.1:8476', '--num_processes=2', '--process_id=2'], {},
     '--process_id=2 must be below --num_processes=2'),
    (['--coordinator_address=127.0.0.1:8476', '--num_processes=2', '--process_id=-1'], {},
     "--process_id='-1' must be an integer >= 0"),
    (['--heartbeat_timeout_s=0'], {}, "--heartbeat_timeout_s='0' must be an integer >= 1"),
]
PROBE = """
import contextlib, io, json, os, sys
from synth_jax import cli
answers = []
for argv, environ in json.loads(sys.argv[1]):
  os.environ.update(environ)
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    status = cli.main(argv)
  for name in environ:
    del os.environ[name]
  answers.append([status, err.getvalue()])
print(json.dumps({'answers': answers, 'heavy': [m for m in ('tensorflow', 'jax', 'seqio')
                                                if m in sys.modules]}))
"""


def test_a_missing_or_bad_coordination_value_is_one_line_before_anything_is_built(tmp_path):
  model_dir = tmp_path / 'run'
  cases = [(['train', '--gin_file=configs/demo.gin', f"--gin.MODEL_DIR='{model_dir}'", *flags],
            environ) for flags, environ, _ in MISTAKES]
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_') or 'CACHE' in k}
  result = subprocess.run([sys.executable, '-c', PROBE, json.dumps(cases)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  found = json.loads(result.stdout.strip().splitlines()[-1])
  for (status, stderr), (_, _, says) in zip(found['answers'], MISTAKES):
    assert status == 2 and stderr.count('\n') == 1, stderr
    assert stderr.startswith(f'synth-jax train: {says}'), stderr
  assert found['heavy'] == []  # answered from the flags alone: no TensorFlow, no jax
  assert not model_dir.exists()
