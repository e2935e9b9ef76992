"""The first minute of a user: each common mistake is one line on stderr, exit status 2, and
MODEL_DIR untouched; help comes without importing TensorFlow or jax."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from synth_jax import lease

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synth_jax(*args, env=None, timeout=120):
  return subprocess.run([sys.executable, '-m', 'synth_jax.cli', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})})


def snapshot(directory):
  return sorted(os.walk(directory)) if os.path.exists(directory) else None


def hold_lease(model_dir):
  """A lease as a live trainer (this test process) on this host holds it."""
  os.makedirs(model_dir, exist_ok=True)
  held = lease.Lease(str(model_dir)).mine
  with open(os.path.join(model_dir, lease.LEASE_FILE), 'w') as f:
    json.dump({**held, 'pid': os.getpid(), 'heartbeat': time.time()}, f)


# (name, arguments with {dir} for MODEL_DIR, what the one line must say, prepare MODEL_DIR)
MISTAKES = [
    ('unquoted string', ['train', '--gin_file=configs/demo.gin', '--gin.MODEL_DIR={dir}'],
     '--gin.MODEL_DIR="\'{dir}\'"', None),
    ('not a value', ['train', '--gin_file=configs/demo.gin', '--gin.TRAIN_STEPS=abc'],
     'is not a gin value', None),
    ('missing gin file', ['train', '--gin_file=configs/nope.gin', "--gin.MODEL_DIR='{dir}'"],
     '--gin_file=configs/nope.gin: not found', None),
    ('eval without checkpoints', ['eval', "--gin.MODEL_DIR='{dir}'"],
     'eval needs a checkpoint', os.makedirs),
    ('infer without checkpoints', ['infer', "--gin.MODEL_DIR='{dir}'"],
     'infer needs a checkpoint', os.makedirs),
    ('second trainer', ['train', '--gin_file=configs/demo.gin', "--gin.MODEL_DIR='{dir}'"],
     'is in use by trainer pid', hold_lease),
    ('MODEL_DIR is a file', ['train', '--gin_file=configs/demo.gin', "--gin.MODEL_DIR='{dir}'"],
     'is a file: point MODEL_DIR at a directory you can write',
     lambda path: open(path, 'w').close()),
    ('attention typo', ['train', '--gin_file=configs/demo.gin', "--gin.MODEL_DIR='{dir}'",
                        "--gin.ATTENTION_TYPE='randm'"],
     "unknown attention type 'randm'", None),
    ('no gin at all', ['train'], 'give a --gin_file', None),
    ('initial checkpoint not there', ['train', '--gin_file=configs/demo.gin',
                                      "--gin.MODEL_DIR='{dir}'",
                                      "--gin.INITIAL_CHECKPOINT_PATH='{dir}/../nope/100'"],
     "INITIAL_CHECKPOINT_PATH '{dir}/../nope/100' does not exist", None),
]


@pytest.mark.parametrize('name,args,says,prepare', MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_line_exit_2_and_model_dir_untouched(tmp_path, name, args, says,
                                                                  prepare):
  del name
  model_dir = str(tmp_path / 'run')
  if prepare:
    prepare(model_dir)
  before = snapshot(model_dir)
  result = synth_jax(*[a.format(dir=model_dir) for a in args])
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1, result.stderr
  assert says.format(dir=model_dir) in lines[0]
  assert lines[0].startswith(f'synth-jax {args[0]}: ')
  assert snapshot(model_dir) == before


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='needs Linux /proc')
def test_a_model_dir_nothing_can_be_created_in_is_refused_up_front():
  result = synth_jax('train', '--gin_file=configs/demo.gin', "--gin.MODEL_DIR='/proc/x'")
  assert result.returncode == 2
  assert result.stderr.strip() == (
      "synth-jax train: MODEL_DIR='/proc/x' cannot be created or written (/proc is not "
      "writable): point MODEL_DIR at a directory you can write, e.g. "
      "--gin.MODEL_DIR=\"'/tmp/my_run'\".")


def test_debug_shows_the_traceback(tmp_path):
  args = ['train', '--gin_file=configs/demo.gin', '--gin.TRAIN_STEPS=abc']
  assert 'Traceback' in synth_jax('--debug', *args).stderr
  assert 'Traceback' in synth_jax(*args, env={'SYNTH_JAX_DEBUG': '1'}).stderr
  assert 'Traceback' not in synth_jax(*args).stderr


PROBE = """
import sys
from synth_jax import cli
try:
  cli.main(sys.argv[1:])
except SystemExit:
  pass
heavy = [m for m in ('tensorflow', 'jax', 'seqio', 'matplotlib') if m in sys.modules]
print('HEAVY', ','.join(heavy))
"""


@pytest.mark.parametrize('args', [['--help'], ['train', '--help'], ['eval', '--help'],
                                  ['infer', '--help'], ['params', '--help'],
                                  ['diagnose', '--help'], ['diagnose-compare', '--help'],
                                  ['bench', '--help'], ['attention-maps', '--help'],
                                  ['diagnose', '--preset', 'nope', '--attention', 'vanilla'],
                                  ['diagnose', '--gin.X=1', '--attention', 'vanilla', '--out', 'x'],
                                  ['train', '--gin_file=configs/nope.gin'],
                                  ['eval', "--gin.MODEL_DIR='/nonexistent/run'"]])
def test_help_and_early_answers_import_neither_tensorflow_nor_jax(args):
  """What makes them fast (under 2 s on 2 idle cores; timed here only with a generous bound)."""
  started = time.perf_counter()
  result = subprocess.run([sys.executable, '-c', PROBE, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
  assert time.perf_counter() - started < 20
  assert result.stdout.strip().splitlines()[-1] == 'HEAVY', result.stdout + result.stderr
  if args[-1] == '--help':
    assert f'usage: synth-jax {args[0] if len(args) > 1 else ""}' in result.stdout
  elif args[0] == 'diagnose':  # refused by the flags alone, as the command itself would
    assert ("argument --preset: invalid choice: 'nope'" in result.stderr
            or 'unrecognized arguments: --gin.X=1' in result.stderr), result.stderr


def test_each_command_has_its_own_help():
  for command, says in (('train', 'train a T5 model'), ('eval', 'evaluate MODEL_DIR'),
                        ('infer', '--examples'), ('params', 'attention types')):
    result = synth_jax(command, '--help')
    assert result.returncode == 0 and says in result.stdout
    assert f'usage: synth-jax {command}' in result.stdout


def test_an_input_longer_than_a_synthesizers_maximum_is_one_line_and_writes_nothing(tmp_path):
  model_dir = str(tmp_path / 'run')
  result = synth_jax('train', '--gin_file=configs/demo.gin', f"--gin.MODEL_DIR='{model_dir}'",
                     "--gin.ATTENTION_TYPE='random'",
                     "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 32}")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert 'exceeds' in lines[0] and 'T5Config.max_encoder_length' in lines[0]
  assert not os.path.exists(model_dir)
