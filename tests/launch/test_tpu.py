"""launch/tpu.py against a fake `gcloud`: the exact commands, and what they do on a fake worker.

The fake `gcloud` appends its argv to a log, keeps TPU VMs and queued resources in a state file,
and plays one TPU worker: `scp` copies into a fake home directory and `ssh --command` runs
the command there with bash. So the remote scripts really run: the checkout is unpacked, a fake
`python3` records the pip calls, and a fake `synth-jax` on ~/.local/bin records its argv and exits
with a chosen status while the launcher follows its log.
"""
import ast
import dataclasses
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / 'launch' / 'tpu.py'

_spec = importlib.util.spec_from_file_location('launch_tpu', LAUNCHER)
tpu = importlib.util.module_from_spec(_spec)
sys.modules['launch_tpu'] = tpu
_spec.loader.exec_module(tpu)

# Only os and sys, state as Python literals, ssh by exec: each call starts in ~15 ms, not ~90.
FAKE_GCLOUD = r'''
import os, sys

argv = sys.argv[1:]
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(repr(argv) + '\n')
state_file = os.environ['FAKE_GCLOUD_STATE']
with open(state_file) as f:
  state = eval(f.read())
home = os.environ['FAKE_VM_HOME']
words = [a for a in argv if not a.startswith('--')]
flags = dict(a[2:].split('=', 1) for a in argv if a.startswith('--') and '=' in a)
group, verb, name = words[2], words[3], words[4]
nodes, queued = state['nodes'], state['queued']


def not_found():
  sys.exit(f"ERROR: (gcloud.compute.tpus.{group}.{verb}) NOT_FOUND: Resource "
           f"'projects/proj/locations/zone/nodes/{name}' was not found")


def current(states):  # a list of states: each describe shows the next, the last one stays
  return states.pop(0) if len(states) > 1 else states[0]


if state.get('fail_describe') and verb == 'describe':
  sys.exit(state['fail_describe'])
if group == 'tpu-vm' and verb == 'describe':
  if name not in nodes:
    not_found()
  fields = {'state': current(nodes[name]['states']), 'acceleratorType': nodes[name]['type']}
  print('\t'.join(fields[k] for k in flags['format'][len('value('):-1].split(',')))
elif group == 'tpu-vm' and verb == 'create':
  nodes[name] = {'states': ['READY'], 'type': flags['accelerator-type']}
elif group == 'tpu-vm' and verb == 'delete':
  if name not in nodes:
    not_found()
  del nodes[name]
elif group == 'queued-resources' and verb == 'describe':
  if name not in queued:
    not_found()
  print(current(queued[name]))
elif group == 'queued-resources' and verb == 'create':
  queued[flags['node-id']] = ['WAITING_FOR_RESOURCES', 'PROVISIONING', 'ACTIVE']
  nodes[flags['node-id']] = {'states': ['READY'], 'type': flags['accelerator-type']}
elif group == 'queued-resources' and verb == 'delete':
  del queued[name]
  nodes.pop(name, None)
elif verb == 'scp':
  with open(words[4], 'rb') as src, open(os.path.join(home, words[5].split(':', 1)[1]), 'wb') as dst:
    dst.write(src.read())
with open(state_file, 'w') as f:
  f.write(repr(state))
if verb == 'ssh':
  sys.stdout.flush()
  os.chdir(home)
  os.execve('/bin/bash', ['bash', '-c', flags['command']], dict(os.environ, HOME=home))
'''

# Bash, not Python: it must be done before the launcher's follow step starts, so that step's
# timing is what the test measures, not interpreter start-up.
FAKE_TRAINER = r'''#!/bin/bash
{ printf '%s\n' "$PWD"; printf '%q ' "$@"; echo; } >> ~/trainer.txt
trap 'echo SIGTERM >> ~/trainer-signals; exit 143' TERM
echo 'step 100: loss 10.37'
sleep "${FAKE_TRAIN_SECONDS:-0}" & wait $!
echo 'step 200: loss 9.81'
exit "${FAKE_TRAIN_EXIT:-0}"
'''

FAKE_PYTHON3 = r'''#!/bin/bash
{ printf '%q ' "$@"; echo; } >> ~/pip.txt
'''

NAME = 'synth-jax-exp'
JAX_PIN = '0.4.31'  # the fake checkout's lower bound; `python -S` runs see no installed jax
WHERE = ['--zone=us-zone-a', '--project=proj', '--quiet']
LAUNCH = ['train', '--bucket=gs://bkt', '--zone=us-zone-a', '--project=proj', '--experiment=exp',
          '--gin_file=configs/tiny.gin', "--gin.ATTENTION_TYPE='random'", '--poll_seconds=0']
TRAINER_ARGV = ['train', '--gin_file=configs/tiny.gin', '--gin_search_paths=configs',
                '--gin_search_paths=gin', '--tfds_data_dir=gs://bkt/tensorflow_datasets',
                "--gin.ATTENTION_TYPE='random'", "--gin.MODEL_DIR='gs://bkt/synth-jax/exp'"]


def _script(path: Path, body: str) -> None:
  path.write_text(body)
  path.chmod(0o755)


class Cloud:
  """A fake gcloud on PATH, one fake TPU worker home, and a small synth-jax checkout."""

  def __init__(self, root: Path):
    self.root = root
    self.bin = root / 'bin'
    self.home = root / 'worker'
    self.tmp = root / 'tmp'
    self.src = root / 'src'
    self.log = root / 'gcloud-calls.txt'
    self.state_file = root / 'gcloud-state.txt'
    for d in (self.bin, self.home / '.local' / 'bin', self.tmp, self.src / 'configs',
              self.src / 'gin' / 'runs', self.src / 'synth_jax' / '__pycache__',
              self.src / '.venv' / 'lib', self.src / 'results', self.src / 'benchmarks',
              self.src / 'docs'):
      d.mkdir(parents=True)
    _script(self.bin / 'gcloud', f'#!{sys.executable} -S\n{FAKE_GCLOUD}')  # -S: faster start
    _script(self.bin / 'python3', FAKE_PYTHON3)
    _script(self.home / '.local' / 'bin' / 'synth-jax', FAKE_TRAINER)
    (self.src / 'pyproject.toml').write_text(
        f'[project]\nname = "synth-jax"\ndependencies = ["jaxlib>=9.9", "jax>={JAX_PIN}"]\n')
    (self.src / 'gin' / 'runs' / 'train.gin').write_text('TRAIN_STEPS = 10\n')
    for left_out in ('results/run.json', 'benchmarks/table.md', 'docs/notes.md'):
      (self.src / left_out).write_text('stays on the laptop')
    (self.src / 'configs' / 'tiny.gin').write_text('ATTENTION_TYPE = "vanilla"\n')
    (self.src / 'synth_jax' / '__init__.py').write_text('')
    (self.src / 'synth_jax' / '__pycache__' / 'x.pyc').write_text('stale')
    (self.src / '.venv' / 'lib' / 'big.so').write_text('not shipped')
    self.state = {'nodes': {}, 'queued': {}}

  @property
  def archive(self) -> Path:
    return self.tmp / f'{NAME}.tar.gz'

  def env(self, **extra: str) -> dict:
    return dict(os.environ, PATH=f'{self.bin}{os.pathsep}{os.environ["PATH"]}', TMPDIR=str(self.tmp),
                FAKE_GCLOUD_LOG=str(self.log), FAKE_GCLOUD_STATE=str(self.state_file),
                FAKE_VM_HOME=str(self.home), **extra)

  def run(self, args: list[str], env: dict | None = None, **extra: str):
    self.state_file.write_text(repr(self.state))
    if not any(a.startswith('--source=') for a in args):
      args = [*args, f'--source={self.src}']
    # -S: no site-packages, as on a laptop without jax (and a faster start).
    done = subprocess.run([sys.executable, '-S', str(LAUNCHER), *args],
                          env=env or self.env(**extra), capture_output=True, text=True, timeout=60)
    self.state = ast.literal_eval(self.state_file.read_text())
    return done

  def calls(self) -> list[list[str]]:
    """The gcloud argv lists since the last call, without the leading 'gcloud'."""
    if not self.log.exists():
      return []
    lines = self.log.read_text().splitlines()
    self.log.unlink()
    return [ast.literal_eval(line) for line in lines]

  def trainer_runs(self) -> list[dict]:
    """{'argv', 'cwd'} of each time the fake synth-jax ran on the worker."""
    path = self.home / 'trainer.txt'
    lines = path.read_text().splitlines() if path.exists() else []
    return [{'argv': shlex.split(argv), 'cwd': cwd} for cwd, argv in zip(lines[::2], lines[1::2])]

  def pip_calls(self) -> list[list[str]]:
    path = self.home / 'pip.txt'
    return [shlex.split(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def cloud(tmp_path):
  c = Cloud(tmp_path)
  yield c
  pid_file = c.home / 'synth-jax.pid'  # a run a test left going: end its session
  if pid_file.exists():
    try:
      os.killpg(int(pid_file.read_text()), signal.SIGKILL)
    except ProcessLookupError:
      pass


def config(cloud: Cloud, args: list[str] = LAUNCH):
  return tpu.parse([*args, f'--source={cloud.src}', '--dry_run'])


# The expected commands, spelled out (without the leading 'gcloud').
DESCRIBE_VM = ['compute', 'tpus', 'tpu-vm', 'describe', NAME,
               '--format=value(state,acceleratorType)', *WHERE]
CREATE_VM = ['compute', 'tpus', 'tpu-vm', 'create', NAME, '--accelerator-type=v3-8',
             '--version=tpu-ubuntu2204-base', *WHERE]
DESCRIBE_VM_STATE = ['compute', 'tpus', 'tpu-vm', 'describe', NAME, '--format=value(state)', *WHERE]
DELETE_VM = ['compute', 'tpus', 'tpu-vm', 'delete', NAME, *WHERE]
DESCRIBE_QR = ['compute', 'tpus', 'queued-resources', 'describe', NAME,
               '--format=value(state.state)', *WHERE]
CREATE_QR = ['compute', 'tpus', 'queued-resources', 'create', NAME, f'--node-id={NAME}',
             '--accelerator-type=v3-8', '--runtime-version=tpu-ubuntu2204-base', *WHERE]
DELETE_QR = ['compute', 'tpus', 'queued-resources', 'delete', NAME, '--force', *WHERE]


def run_steps(cloud: Cloud, cfg=None) -> list[list[str]]:
  """scp, install, start and follow: what every launch does once the VM is READY."""
  cfg = cfg or config(cloud)
  ssh = ['compute', 'tpus', 'tpu-vm', 'ssh', NAME]
  return [
      ['compute', 'tpus', 'tpu-vm', 'scp', str(cloud.archive), f'{NAME}:synth-jax-src.tar.gz',
       '--worker=all', *WHERE],
      [*ssh, '--worker=all', f'--command={tpu.install_command(None, JAX_PIN)}', *WHERE],
      [*ssh, '--worker=all', f'--command={tpu.start_command(cfg)}', *WHERE],
      [*ssh, '--worker=0', f'--command={tpu.follow_command(cfg)}', *WHERE],
  ]


def test_create_and_run_creates_vm_installs_checkout_and_streams_training_log(cloud):
  done = cloud.run(LAUNCH)
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_VM, CREATE_VM, *run_steps(cloud)]
  assert cloud.state['nodes'][NAME]['type'] == 'v3-8'
  # The checkout is unpacked on the worker, without the local virtualenv or bytecode.
  tree = cloud.home / 'synth-jax'
  assert (tree / 'configs' / 'tiny.gin').read_text() == 'ATTENTION_TYPE = "vanilla"\n'
  assert not (tree / '.venv').exists() and not (tree / 'synth_jax' / '__pycache__').exists()
  # jax[tpu] is pinned: no jax on this "laptop", so to the checkout's lower bound.
  assert cloud.pip_calls() == [
      ['-m', 'pip', 'uninstall', '--yes', '--quiet', 'synth-jax'],
      ['-m', 'pip', 'install', str(tree), f'jax[tpu]=={JAX_PIN}', '--find-links',
       'https://storage.googleapis.com/jax-releases/libtpu_releases.html']]
  assert (f'jax[tpu]=={JAX_PIN} on the VM, from jax>={JAX_PIN} in {cloud.src / "pyproject.toml"} '
          '(--jax_version=VERSION overrides)') in done.stderr
  assert cloud.trainer_runs() == [{'argv': TRAINER_ARGV, 'cwd': str(tree)}]
  # The start step reports the pid; the follow step streams the whole log, first line to last.
  started, log = done.stdout.split('\n', 1)
  assert re.fullmatch(r'\S+: started synth-jax train \(pid \d+\), log ~/synth-jax-train.log', started)
  assert log == 'step 100: loss 10.37\nstep 200: loss 9.81\n'
  assert (cloud.home / 'synth-jax-train.log').read_text() == log
  assert 'MODEL_DIR=gs://bkt/synth-jax/exp' in done.stderr


def test_ready_vm_is_reused_without_create(cloud):
  cloud.state['nodes'][NAME] = {'states': ['READY'], 'type': 'v3-8'}
  done = cloud.run(LAUNCH)
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_VM, *run_steps(cloud)]
  assert cloud.trainer_runs() == [{'argv': TRAINER_ARGV, 'cwd': str(cloud.home / 'synth-jax')}]


def test_vm_still_creating_is_waited_for_then_reused(cloud):
  cloud.state['nodes'][NAME] = {'states': ['CREATING', 'CREATING', 'READY'], 'type': 'v3-8'}
  done = cloud.run(LAUNCH)
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_VM, DESCRIBE_VM, DESCRIBE_VM, *run_steps(cloud)]


def test_existing_vm_of_another_size_is_refused_not_reused(cloud):
  cloud.state['nodes'][NAME] = {'states': ['READY'], 'type': 'v3-32'}
  done = cloud.run(LAUNCH)
  assert done.returncode == 1
  assert cloud.calls() == [DESCRIBE_VM]
  assert f'TPU VM {NAME} exists as v3-32, not v3-8' in done.stderr


@pytest.mark.parametrize('flag', ['--spot', '--preemptible'])
def test_spot_and_preemptible_reach_create(cloud, flag):
  done = cloud.run([*LAUNCH, flag])
  assert done.returncode == 0, done.stderr
  create = [*CREATE_VM[:-3], flag, *WHERE]
  assert cloud.calls() == [DESCRIBE_VM, create, *run_steps(cloud, config(cloud, [*LAUNCH, flag]))]


def test_queued_resource_is_created_and_polled_until_active(cloud):
  args = [*LAUNCH, '--queued', '--spot']
  done = cloud.run(args)
  assert done.returncode == 0, done.stderr
  create = [*CREATE_QR[:-3], '--spot', *WHERE]
  # WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE: three polls.
  assert cloud.calls() == [DESCRIBE_QR, create, DESCRIBE_QR, DESCRIBE_QR, DESCRIBE_QR,
                           *run_steps(cloud, config(cloud, args))]
  assert 'queued resource synth-jax-exp is WAITING_FOR_RESOURCES' in done.stderr


def test_active_queued_resource_with_ready_vm_is_reused(cloud):
  cloud.state['queued'][NAME] = ['ACTIVE']
  cloud.state['nodes'][NAME] = {'states': ['READY'], 'type': 'v3-8'}
  args = [*LAUNCH, '--queued']
  done = cloud.run(args)
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_QR, DESCRIBE_VM, *run_steps(cloud, config(cloud, args))]


def test_suspended_queued_resource_is_deleted_and_queued_again(cloud):
  cloud.state['queued'][NAME] = ['SUSPENDED']
  args = [*LAUNCH, '--queued']
  done = cloud.run(args)
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_QR, DELETE_QR, CREATE_QR, DESCRIBE_QR, DESCRIBE_QR,
                           DESCRIBE_QR, *run_steps(cloud, config(cloud, args))]


def test_preempted_vm_is_recreated_and_training_resumes_in_the_same_model_dir(cloud):
  assert cloud.run(LAUNCH).returncode == 0
  assert cloud.calls() == [DESCRIBE_VM, CREATE_VM, *run_steps(cloud)]
  cloud.state['nodes'][NAME]['states'] = ['PREEMPTED']

  done = cloud.run(LAUNCH)  # the same command again
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_VM, DELETE_VM, CREATE_VM, *run_steps(cloud)]
  assert 'TPU VM synth-jax-exp is PREEMPTED: deleting and recreating it' in done.stderr
  # Both runs got the same MODEL_DIR, so the trainer resumes from the first run's checkpoints.
  assert [r['argv'] for r in cloud.trainer_runs()] == [TRAINER_ARGV, TRAINER_ARGV]


def test_rerun_on_a_live_vm_stops_the_earlier_run_with_sigterm_first(cloud):
  first = cloud.run([*LAUNCH, '--detach'], FAKE_TRAIN_SECONDS='60')
  assert first.returncode == 0, first.stderr
  assert cloud.calls() == [DESCRIBE_VM, CREATE_VM, *run_steps(cloud)[:3]]  # no follow
  assert f'follow the log again with: gcloud compute tpus tpu-vm ssh {NAME}' in first.stderr
  assert not (cloud.home / 'trainer-signals').exists()

  second = cloud.run(LAUNCH)
  assert second.returncode == 0, second.stderr
  assert (cloud.home / 'trainer-signals').read_text() == 'SIGTERM\n'
  assert 'stopping the synth-jax run started earlier' in second.stdout
  assert len(cloud.trainer_runs()) == 2


def test_training_failure_is_the_launchers_exit_status(cloud):
  done = cloud.run(LAUNCH, FAKE_TRAIN_EXIT='3')
  assert done.returncode == 3
  # After a failure the launcher looks at the VM: still READY, so the failure is the trainer's.
  assert cloud.calls() == [DESCRIBE_VM, CREATE_VM, *run_steps(cloud), DESCRIBE_VM]
  assert 'synth-jax train ended with status 3' in done.stderr


def test_preemption_during_the_run_exits_75_so_a_loop_can_rerun(cloud):
  cloud.state['nodes'][NAME] = {'states': ['READY', 'PREEMPTED'], 'type': 'v3-8'}
  done = cloud.run(LAUNCH, FAKE_TRAIN_EXIT='143')  # SIGTERM from the VM going down
  assert done.returncode == 75
  assert cloud.calls() == [DESCRIBE_VM, *run_steps(cloud), DESCRIBE_VM]
  assert f'TPU VM {NAME} was preempted (PREEMPTED). Re-run this command' in done.stderr


def test_describe_error_other_than_not_found_stops_before_any_change(cloud):
  cloud.state['fail_describe'] = 'ERROR: (gcloud.compute.tpus.tpu-vm.describe) PERMISSION_DENIED: no'
  done = cloud.run(LAUNCH)
  assert done.returncode == 1
  assert cloud.calls() == [DESCRIBE_VM]
  assert 'PERMISSION_DENIED: no' in done.stderr


def test_delete_removes_the_vm_made_by_the_same_flags(cloud):
  assert cloud.run(LAUNCH).returncode == 0
  cloud.calls()
  done = cloud.run(['delete', *LAUNCH[1:]])
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_QR, DESCRIBE_VM_STATE, DELETE_VM]
  assert cloud.state['nodes'] == {}


def test_delete_removes_the_queued_resource_with_its_vm(cloud):
  cloud.state['queued'][NAME] = ['ACTIVE']
  cloud.state['nodes'][NAME] = {'states': ['READY'], 'type': 'v3-8'}
  done = cloud.run(['delete', f'--name={NAME}', '--zone=us-zone-a', '--project=proj'])
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_QR, DELETE_QR]
  assert cloud.state == {'nodes': {}, 'queued': {}}


def test_delete_of_nothing_succeeds_and_says_so(cloud):
  done = cloud.run(['delete', f'--name={NAME}', '--zone=us-zone-a', '--project=proj'])
  assert done.returncode == 0, done.stderr
  assert cloud.calls() == [DESCRIBE_QR, DESCRIBE_VM_STATE]
  assert f'nothing to delete: no TPU VM or queued resource named {NAME}' in done.stderr


# Shell functions in place of tar and gcloud: each prints its argv, NUL-separated, then \x01.
_RECORD = r'''record() { printf '%s\0' "$@"; printf '\1\0'; }
tar() { record tar "$@"; }
gcloud() { record gcloud "$@"; }
'''


def printed_commands(text: str) -> list[list[str]]:
  """The argv of each command in `text`, as bash parses it."""
  out = subprocess.run(['bash', '-c', _RECORD + text], capture_output=True, text=True,
                       check=True).stdout
  return [record.strip('\0').split('\0') for record in out.split('\1\0')[:-1]]


def test_dry_run_prints_every_command_and_runs_none(cloud):
  done = cloud.run([*LAUNCH, '--dry-run'])
  assert done.returncode == 0, done.stderr
  assert not cloud.log.exists() and not cloud.archive.exists()
  tar = ['tar', '-czf', str(cloud.archive), *(f'--exclude={p}' for p in tpu.TAR_EXCLUDES),
         '-C', str(cloud.src), './configs', './gin', './pyproject.toml', './synth_jax']
  expected = [tar] + [['gcloud', *c] for c in [DESCRIBE_VM, CREATE_VM, *run_steps(cloud)]]
  assert printed_commands(done.stdout) == expected


def test_printed_commands_are_readable_with_no_nested_quote_escapes(cloud):
  dry = cloud.run([*LAUNCH, '--dry-run'])
  assert dry.returncode == 0, dry.stderr
  ran = cloud.run([*LAUNCH, '--detach'])
  assert ran.returncode == 0, ran.stderr
  for printed in (dry.stdout, ran.stderr):
    assert "'\"'\"'" not in printed
    # The trainer's command reads as it would be typed, gin quotes and all.
    assert ("bash synth-jax train --gin_file=configs/tiny.gin --gin_search_paths=configs "
            "--gin_search_paths=gin --tfds_data_dir=gs://bkt/tensorflow_datasets "
            "\"--gin.ATTENTION_TYPE='random'\" \"--gin.MODEL_DIR='gs://bkt/synth-jax/exp'\" "
            "> ~/synth-jax-train.log") in printed
    assert f'python3 -m pip install ~/synth-jax "jax[tpu]=={JAX_PIN}"' in printed
  assert '+ gcloud compute tpus tpu-vm ssh' in ran.stderr


@pytest.mark.parametrize('word', [
    "--gin.ATTENTION_TYPE='random'", 'plain', 'two words', 'it\'s "$HOME" `x` \\ !',
    "--command=set -e\necho '$1' \"$2\"\nEOF\n  EOF", "--gin.X='a'\n", "--flag=a'b!c", '',
])
def test_shell_word_round_trips_through_bash(word):
  out = subprocess.run(['bash', '-c', f"printf '%s\\0' {tpu.shell_word(word)}"],
                       capture_output=True, text=True, check=True).stdout
  assert out == word + '\0'


def test_dry_run_output_pasted_into_a_shell_launches(cloud):
  lines = cloud.run([*LAUNCH, '--dry-run']).stdout.splitlines()
  # Without the describe (which, for a VM that does not exist yet, fails with NOT_FOUND).
  script = '\n'.join(line for line in lines if ' describe ' not in line)
  assert len(script.splitlines()) == len(lines) - 1
  done = subprocess.run(['bash', '-e', '-c', script], env=cloud.env(), capture_output=True,
                        text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  assert cloud.trainer_runs() == [{'argv': TRAINER_ARGV, 'cwd': str(cloud.home / 'synth-jax')}]
  assert done.stdout.endswith('step 100: loss 10.37\nstep 200: loss 9.81\n')


@pytest.mark.parametrize('accelerator, runtime, hosts', [
    ('v3-32', 'tpu-ubuntu2204-base', 4),
    ('v4-16', 'tpu-ubuntu2204-base', 2),
    ('v5litepod-16', 'v2-alpha-tpuv5-lite', 4),
    ('v5p-8', 'v2-alpha-tpuv5', 1),
    ('v6e-8', 'v2-alpha-tpuv6e', 1),
])
def test_multi_host_types_get_their_runtime_and_every_worker(cloud, accelerator, runtime, hosts):
  done = cloud.run([*LAUNCH, f'--accelerator_type={accelerator}', '--dry-run'])
  assert done.returncode == 0, done.stderr
  lines = printed_commands(done.stdout)
  assert lines[2] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', NAME,
                      f'--accelerator-type={accelerator}', f'--version={runtime}', *WHERE]
  workers = [a for line in lines[3:] for a in line if a.startswith('--worker=')]
  assert workers == ['--worker=all'] * 3 + ['--worker=0']  # scp, install, start; follow
  assert f'{accelerator} ({hosts} host' in done.stderr
  multihost = ['--multihost'] if hosts > 1 else []
  assert config(cloud, [*LAUNCH, f'--accelerator_type={accelerator}']).trainer_args() == [
      *TRAINER_ARGV[1:5], *multihost, *TRAINER_ARGV[5:]]


def test_default_experiment_depends_on_gin_files_and_overrides_only(cloud):
  base = [a for a in LAUNCH if not a.startswith('--experiment')]
  random = config(cloud, base)
  assert random.model_dir == config(cloud, base).model_dir  # a re-run resumes the same directory
  assert re.fullmatch(r'gs://bkt/synth-jax/tiny-[0-9a-f]{8}', random.model_dir)
  assert random.name == f'synth-jax-{random.experiment}'
  dense = config(cloud, [*base, "--gin.ATTENTION_TYPE='dense'"])
  assert dense.model_dir != random.model_dir and dense.name != random.name
  assert config(cloud, [*base, '--model_dir=gs://other/run1/']).model_dir == 'gs://other/run1'
  assert config(cloud, [*base, '--tfds_data_dir=gs://data']).tfds_data_dir == 'gs://data'


def test_long_experiment_names_give_valid_distinct_vm_names(cloud):
  names = [config(cloud, [*LAUNCH, f'--experiment={"x" * 80}{i}']).name for i in range(2)]
  assert names[0] != names[1]
  assert all(re.fullmatch(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?', n) for n in names)


def test_bad_input_exits_2_from_the_command_line_without_calling_gcloud(cloud):
  done = cloud.run([a for a in LAUNCH if not a.startswith('--bucket')])
  assert done.returncode == 2
  assert done.stderr.startswith('python launch/tpu.py: error: --bucket is required')
  assert not cloud.log.exists() and not cloud.archive.exists()


@pytest.fixture
def commands(cloud, monkeypatch):
  """main() in this process, with the fake gcloud on PATH; records (never runs) any command."""
  monkeypatch.setenv('PATH', cloud.env()['PATH'])
  ran = []
  monkeypatch.setattr(tpu.subprocess, 'run', lambda argv, **_: ran.append(argv))
  return ran


def status_of_main(args: list[str]) -> int:
  try:
    return tpu.main(args)
  except SystemExit as e:  # argparse's own errors
    return e.code


@pytest.mark.parametrize('args, message', [
    ([a for a in LAUNCH if not a.startswith('--bucket')],
     "--bucket is required: the GCS bucket for checkpoints and data, e.g. --bucket=gs://my-bucket"),
    ([*LAUNCH, '--bucket=my-bucket'],
     "--bucket must be a gs:// URL such as gs://my-bucket (the TPU VM reads and writes it; it "
     "cannot reach your laptop), got 'my-bucket'. Did you mean --bucket=gs://my-bucket?"),
    ([*LAUNCH, '--bucket=s3://bkt'], "--bucket must be a gs:// URL such as gs://my-bucket"),
    ([*LAUNCH, '--model_dir=/home/me/run'], "--model_dir must be a gs:// URL"),
    ([*LAUNCH, '--accelerator_type=v3-16'],
     "unknown --accelerator_type 'v3-16'. Valid patterns: v2-N with N in 8, 32, 128, 256, 512; "
     'v3-N with N in 8, 32, 64, 128, 256, 512, 1024, 2048; v4-N with N in a multiple of 8; '
     'v5p-N with N in a multiple of 8; v5litepod-N with N in 1, 4, 8, 16, 32, 64, 128, 256; '
     'v6e-N with N in 1, 4, 8, 16, 32, 64, 128, 256 (e.g. v3-8, v3-32, v4-16, v5litepod-16).'),
    ([*LAUNCH, '--accelerator_type=tpu-v3-8'], "unknown --accelerator_type 'tpu-v3-8'"),
    ([a for a in LAUNCH if not a.startswith('--gin_file')],
     'train needs at least one --gin_file, e.g. --gin_file=configs/c4_pretrain_base.gin.'),
    ([*LAUNCH, "--gin.MODEL_DIR='gs://bkt/x'"], 'do not pass --gin.MODEL_DIR: the launcher sets it'),
    ([*LAUNCH, '--gin.TRAIN_STEPS', '10'],
     'write gin overrides as one argument, --gin.TRAIN_STEPS=VALUE.'),
    ([*LAUNCH, '--zones=us-zone-a'], "unrecognized argument '--zones=us-zone-a' (see --help)."),
    ([*LAUNCH, '--queued', '--preemptible'], 'queued resources take --spot, not --preemptible.'),
    ([*LAUNCH, '--spot', '--preemptible'], 'argument --preemptible: not allowed with argument --spot'),
    ([*LAUNCH, '--name=Bad_Name'], "--name 'Bad_Name' must be 1-63 lowercase letters"),
    ([*LAUNCH, '--experiment=a/b'], "--experiment 'a/b' must be letters, digits"),
    ([*LAUNCH, '--poll_seconds=-1'], '--poll_seconds must be >= 0.'),
    (['delete', '--zone=us-zone-a'], 'delete needs the VM: pass --name=NAME, or the flags you '
     'launched with.'),
    ([*LAUNCH, '--source=/no/such/dir'], "--source '/no/such/dir' is not a checkout directory"),
    ([*LAUNCH, '--source=/'], "--source '/' has no pyproject.toml: point it at a synth-jax checkout"),
    ([*LAUNCH, '--jax_version=latest'],
     "--jax_version must be a version number such as 0.4.35, got 'latest'."),
])
def test_bad_input_fails_before_any_command(cloud, commands, capsys, args, message):
  args = args if any(a.startswith('--source') for a in args) else [*args, f'--source={cloud.src}']
  assert status_of_main(args) == 2
  assert message in capsys.readouterr().err
  assert commands == [] and not cloud.log.exists()


def test_missing_gin_file_lists_where_it_looked_and_the_configs(cloud, commands, capsys):
  assert status_of_main([*LAUNCH, '--gin_file=nope.gin', f'--source={cloud.src}']) == 2
  looked = ', '.join(str(cloud.src / d / 'nope.gin') for d in ('', 'configs', 'gin'))
  assert (f"gin file 'nope.gin' not found; looked at {looked}. Pass a path relative to the "
          'checkout, e.g. --gin_file=configs/c4_pretrain_base.gin (configs/ has: '
          'configs/tiny.gin).') in capsys.readouterr().err
  assert commands == []


def test_gin_file_outside_the_checkout_is_refused(cloud, commands, capsys, tmp_path):
  outside = tmp_path / 'mine.gin'
  outside.write_text('')
  assert status_of_main([*LAUNCH, f'--gin_file={outside}', f'--source={cloud.src}']) == 2
  assert (f"gin file '{outside}' is outside the checkout {cloud.src}, which is all that is "
          'copied to the TPU VM: move it into configs/.') in capsys.readouterr().err
  assert commands == []


def test_missing_gcloud_fails_with_install_hint(cloud, commands, capsys, monkeypatch):
  monkeypatch.setenv('PATH', str(cloud.tmp))  # neither the fake nor any real gcloud
  assert status_of_main([*LAUNCH, f'--source={cloud.src}']) == 2
  assert ('gcloud is not on PATH: install the Google Cloud CLI '
          '(https://cloud.google.com/sdk/docs/install), then `gcloud auth login`.'
          ) in capsys.readouterr().err
  assert commands == []


def test_gin_file_name_alone_is_found_in_configs(cloud):
  args = [a for a in LAUNCH if not a.startswith('--gin_file')] + ['--gin_file=tiny.gin']
  assert config(cloud, args).gin_files == ('configs/tiny.gin',)


def test_pip_spec_source_is_installed_while_the_checkout_ships_the_gin_files(cloud, monkeypatch):
  monkeypatch.setattr(tpu, 'REPO_ROOT', cloud.src)  # the checkout the launcher runs from
  monkeypatch.setattr(tpu.tempfile, 'tempdir', str(cloud.tmp))
  cfg = tpu.parse([*LAUNCH, '--source=git+https://github.com/org/synth-jax@v1', '--dry_run',
                   '--jax_version=0.4.38'])
  assert (cfg.code_root, cfg.pip_spec) == (cloud.src, 'git+https://github.com/org/synth-jax@v1')
  assert cfg.gin_files == ('configs/tiny.gin',)
  subprocess.run(tpu.tar_command(cfg), check=True)
  (cloud.home / 'synth-jax-src.tar.gz').write_bytes(cloud.archive.read_bytes())
  done = subprocess.run(['bash', '-c', tpu.install_command(cfg.pip_spec, cfg.jax_version)],
                        cwd=cloud.home,
                        env=cloud.env(HOME=str(cloud.home)), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert (cloud.home / 'synth-jax' / 'configs' / 'tiny.gin').exists()
  assert cloud.pip_calls()[1] == [
      '-m', 'pip', 'install', 'git+https://github.com/org/synth-jax@v1', 'jax[tpu]==0.4.38',
      '--find-links', 'https://storage.googleapis.com/jax-releases/libtpu_releases.html']


def test_jax_version_flag_overrides_the_pin(cloud):
  done = cloud.run([*LAUNCH, '--jax_version=0.5.0rc1'])
  assert done.returncode == 0, done.stderr
  assert cloud.pip_calls()[1][4] == 'jax[tpu]==0.5.0rc1'
  assert 'jax[tpu]==0.5.0rc1 on the VM, from --jax_version\n' in done.stderr


def test_jax_installed_where_the_launcher_runs_is_the_default_pin(cloud, monkeypatch):
  monkeypatch.setattr(tpu.metadata, 'version', lambda name: {'jax': '0.4.36+cuda12'}[name])
  cfg = config(cloud)
  assert (cfg.jax_version, cfg.jax_version_from) == ('0.4.36', 'the jax installed here')
  assert 'python3 -m pip install ~/synth-jax "jax[tpu]==0.4.36" --find-links' in (
      tpu.install_command(cfg.pip_spec, cfg.jax_version))


def test_no_jax_anywhere_asks_for_jax_version(cloud, commands, capsys, monkeypatch):
  def not_installed(name):
    raise tpu.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(tpu.metadata, 'version', not_installed)
  (cloud.src / 'pyproject.toml').write_text('[project]\nname = "synth-jax"\n')
  assert status_of_main([*LAUNCH, f'--source={cloud.src}']) == 2
  assert (f'no jax installed here and no jax version in {cloud.src / "pyproject.toml"}: name the '
          'jax version for the TPU VM with --jax_version=VERSION') in capsys.readouterr().err
  assert commands == []


def test_tarball_ships_code_and_gin_files_but_not_results_benchmarks_or_docs(cloud):
  cfg = config(cloud)
  subprocess.run(tpu.tar_command(cfg), check=True, env=dict(os.environ, COPYFILE_DISABLE='1'))
  listed = subprocess.run(['tar', '-tzf', str(cfg.archive)], capture_output=True, text=True,
                          check=True).stdout.split()
  files = sorted(m for m in listed if not m.endswith('/'))
  assert files == ['./configs/tiny.gin', './gin/runs/train.gin', './pyproject.toml',
                   './synth_jax/__init__.py']


def test_this_checkout_ships_without_results_benchmarks_and_docs(cloud):
  cfg = dataclasses.replace(config(cloud), code_root=tpu.REPO_ROOT)
  shipped = tpu.tar_command(cfg)[tpu.tar_command(cfg).index('-C') + 2:]
  assert {'./synth_jax', './gin', './configs', './pyproject.toml'} <= set(shipped)
  assert not {'./results', './benchmarks', './docs', './.git', './.venv'} & set(shipped)
