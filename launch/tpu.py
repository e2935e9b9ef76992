#!/usr/bin/env python3
"""Runs `synth-jax train|eval|infer` on a Cloud TPU VM from a laptop: stdlib and `gcloud` only.

    python launch/tpu.py train --bucket=gs://my-bucket --zone=europe-west4-a \
        --experiment=random-base --gin_file=configs/c4_pretrain_base.gin \
        --gin.ATTENTION_TYPE="'random'"

One launch, each step a command that `--dry-run` prints instead of running:
  1. pack the checkout (`tar`): it carries the code and the gin files the run names, not the
     results/, benchmarks/ and docs/ the VM never reads;
  2. describe the TPU VM (or its queued resource): reuse it when READY, create it when missing,
     delete and recreate it when it was preempted;
  3. copy the archive to every worker and `pip install` it there with `jax[tpu]` pinned to the
     jax installed here (or, without one, pyproject.toml's lower bound; `--jax_version` overrides);
  4. start `synth-jax MODE` on every worker (`--worker=all`; `--multihost` on multi-host slices),
     detached with setsid/nohup and logging to ~/synth-jax-MODE.log on each worker;
  5. follow worker 0's log until the run ends; Ctrl-C stops following, not the run. The exit
     status is the trainer's, or 75 when the VM was preempted under it.

MODEL_DIR is a pure function of the arguments (bucket + experiment), so re-running the same command
after a preemption recreates the VM and resumes from the latest checkpoint in the same MODEL_DIR.
`python launch/tpu.py delete <the same flags>` tears the VM (and its queued resource) down.
"""
import argparse
import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ('train', 'eval', 'infer')
LIBTPU_FIND_LINKS = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
GIN_DIRS = ('', 'configs', 'gin')  # relative gin paths are looked up in these dirs of the checkout
# Top-level entries of the checkout that stay on the laptop: the VM never reads them, and
# results/ alone is tens of MB. Left out by name, not by a tar pattern, which would also drop
# gin/runs/ (GNU tar and bsdtar both match a bare pattern at any depth).
TOP_LEVEL_EXCLUDES = ('.git', '.venv', 'venv', 'build', 'dist', 'runs', 'tmp', 'results',
                      'benchmarks', 'docs')
TAR_EXCLUDES = ('__pycache__', '*.pyc', '*.egg-info', '.pytest_cache')  # at any depth

# Files on each worker, relative to the ssh user's home.
REMOTE_ARCHIVE = 'synth-jax-src.tar.gz'
REMOTE_TREE = '~/synth-jax'
REMOTE_PID = '~/synth-jax.pid'  # one per VM: the TPU admits one process, whatever the mode

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: the run was cut short by a preemption; re-running resumes it

NODE_PENDING = ('CREATING', 'STARTING', 'RESTARTING', 'REPAIRING', 'REIMAGING')
NODE_LOST = ('PREEMPTED', 'TERMINATED')
QR_PENDING = ('CREATING', 'ACCEPTED', 'WAITING_FOR_RESOURCES', 'PROVISIONING')
QR_LOST = ('FAILED', 'SUSPENDING', 'SUSPENDED')  # spot capacity reclaimed, or never granted


@dataclasses.dataclass(frozen=True)
class TpuFamily:
  sizes: str  # the valid sizes, in words, for the error message
  valid: Callable[[int], bool]
  runtime: str  # the TPU VM software version Cloud TPU recommends for JAX on this family
  hosts: Callable[[int], int]


_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)
# The number after the dash counts TensorCores on v2-v5p (8 per host) and chips on v5e/v6e
# (up to 8 on one host, 4 per host in larger slices).
TPU_FAMILIES = {
    'v2': TpuFamily('8, 32, 128, 256, 512', lambda n: n in (8, 32, 128, 256, 512),
                    'tpu-ubuntu2204-base', lambda n: n // 8),
    'v3': TpuFamily('8, 32, 64, 128, 256, 512, 1024, 2048',
                    lambda n: n in (8, 32, 64, 128, 256, 512, 1024, 2048),
                    'tpu-ubuntu2204-base', lambda n: n // 8),
    'v4': TpuFamily('a multiple of 8', lambda n: n >= 8 and n % 8 == 0,
                    'tpu-ubuntu2204-base', lambda n: n // 8),
    'v5p': TpuFamily('a multiple of 8', lambda n: n >= 8 and n % 8 == 0,
                     'v2-alpha-tpuv5', lambda n: n // 8),
    'v5litepod': TpuFamily(', '.join(map(str, _LITE_SIZES)), lambda n: n in _LITE_SIZES,
                           'v2-alpha-tpuv5-lite', lambda n: 1 if n <= 8 else n // 4),
    'v6e': TpuFamily(', '.join(map(str, _LITE_SIZES)), lambda n: n in _LITE_SIZES,
                     'v2-alpha-tpuv6e', lambda n: 1 if n <= 8 else n // 4),
}


class UsageError(Exception):
  """Bad arguments, found before any cloud call."""


class LaunchError(Exception):
  """A cloud step failed or found the VM in a state the launcher will not guess about."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """Everything one invocation needs, derived and checked from the command line."""
  mode: str  # train | eval | infer | delete
  name: str
  zone: str | None
  project: str | None
  accelerator_type: str
  runtime_version: str
  spot: bool
  preemptible: bool
  queued: bool
  experiment: str
  model_dir: str | None
  tfds_data_dir: str | None
  gin_files: tuple[str, ...]  # relative to the checkout root, which is the run's cwd on the VM
  overrides: tuple[str, ...]  # `--gin.NAME=VALUE`, in the order given
  code_root: Path  # the checkout shipped to the VM
  pip_spec: str | None  # what pip installs there; None: the shipped checkout
  jax_version: str  # installed there as jax[tpu]==jax_version
  jax_version_from: str  # where that version came from, in words
  archive: Path
  detach: bool
  poll_seconds: float
  dry_run: bool

  @property
  def hosts(self) -> int:
    family, size = self.accelerator_type.rsplit('-', 1)
    return TPU_FAMILIES[family].hosts(int(size))

  @property
  def log_file(self) -> str:
    return f'~/synth-jax-{self.mode}.log'

  @property
  def exit_file(self) -> str:
    return f'~/synth-jax-{self.mode}.exit'

  def trainer_args(self) -> list[str]:
    """`synth-jax MODE` arguments, run from the unpacked checkout; MODEL_DIR binds last."""
    return [
        *(f'--gin_file={g}' for g in self.gin_files),
        # `include`s resolve against the checkout's configs/ and gin/: the installed package has
        # no repository around it to find them by itself.
        *(f'--gin_search_paths={d}' for d in GIN_DIRS if d),
        f'--tfds_data_dir={self.tfds_data_dir}',
        # Over ssh a TPU VM worker has no environment that tells synth-jax it is one of several.
        *(['--multihost'] if self.hosts > 1 else []),
        *self.overrides,
        f"--gin.MODEL_DIR='{self.model_dir}'",
    ]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _both(name: str) -> list[str]:
  """`--accelerator_type` (T5X style) and `--accelerator-type` (gcloud style) for one option."""
  spellings = [f'--{name}']
  if '_' in name:
    spellings.append(f"--{name.replace('_', '-')}")
  return spellings


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python launch/tpu.py', allow_abbrev=False,
      usage='%(prog)s {train,eval,infer,delete} [options] [--gin.NAME=VALUE ...]',
      description='Create (or reuse) a Cloud TPU VM, install this checkout on every worker and '
                  'run `synth-jax MODE` there; `delete` tears the VM down.',
      epilog='Any number of --gin.NAME=VALUE overrides are passed to synth-jax unchanged, e.g. '
             "--gin.ATTENTION_TYPE=\"'random'\". Re-run the same command after a preemption: "
             'it recreates the VM and the trainer resumes from the latest checkpoint in MODEL_DIR.')
  p.add_argument('mode', choices=MODES + ('delete',),
                 help='what synth-jax runs on the VM, or delete the VM')
  run = p.add_argument_group('the run')
  run.add_argument(*_both('gin_file'), dest='gin_file', action='append', default=[],
                   metavar='PATH', help='repeatable; relative paths are looked up in the checkout '
                   'root, configs/ and gin/')
  run.add_argument('--bucket', help='gs://BUCKET[/PREFIX] for checkpoints and data (required)')
  run.add_argument('--experiment', help='run name; MODEL_DIR is BUCKET/synth-jax/EXPERIMENT '
                   '(default: the gin file names plus a hash of the --gin overrides)')
  run.add_argument(*_both('model_dir'), dest='model_dir', metavar='GS_URL',
                   help='overrides the derived MODEL_DIR')
  run.add_argument(*_both('tfds_data_dir'), dest='tfds_data_dir', metavar='GS_URL',
                   help='TFDS data on GCS (default: BUCKET/tensorflow_datasets)')
  run.add_argument('--source', metavar='DIR|PIP_SPEC',
                   help='what to install: a local checkout (default: this one) or a pip '
                   'requirement such as git+https://github.com/ORG/synth-jax@REF; gin files always '
                   'come from the local checkout')
  run.add_argument(*_both('jax_version'), dest='jax_version', metavar='VERSION',
                   help='the jax version installed on the VM, as jax[tpu]==VERSION (default: the '
                   'jax installed where this launcher runs; without one, the lower bound in the '
                   "checkout's pyproject.toml)")
  vm = p.add_argument_group('the TPU VM')
  vm.add_argument('--name', help='TPU VM name (default: synth-jax-EXPERIMENT)')
  vm.add_argument('--zone', help="default: gcloud's compute/zone")
  vm.add_argument('--project', help="default: gcloud's core/project")
  vm.add_argument(*_both('accelerator_type'), dest='accelerator_type', default='v3-8',
                  help='v3-8 (default: one host, the 2x2 mesh), v3-32, v4-16, v5litepod-16, ...; '
                  'larger than one host is multi-host and runs on every worker')
  vm.add_argument(*_both('runtime_version'), dest='runtime_version',
                  help='TPU VM software version (default: the one Cloud TPU recommends for JAX on '
                  'the accelerator: tpu-ubuntu2204-base for v2-v4)')
  price = vm.add_mutually_exclusive_group()
  price.add_argument('--spot', action='store_true', help='Spot VM: cheaper, can be preempted')
  price.add_argument('--preemptible', action='store_true',
                     help='preemptible VM (older form of --spot; not with --queued)')
  vm.add_argument('--queued', action='store_true',
                  help='request the VM through a queued resource (same name) and wait until ACTIVE')
  vm.add_argument(*_both('poll_seconds'), dest='poll_seconds', type=float, default=30.0,
                  help='seconds between state checks while waiting (default: 30)')
  launcher = p.add_argument_group('the launcher')
  launcher.add_argument('--detach', action='store_true',
                        help='start the run and return instead of following its log')
  launcher.add_argument(*_both('dry_run'), dest='dry_run', action='store_true',
                        help='print every command, ready to paste into a shell, instead of '
                        'running any')
  return p


def _check_gs(flag: str, value: str) -> str:
  value = value.rstrip('/')
  if not re.fullmatch(r'gs://[a-z0-9][a-z0-9._-]*[a-z0-9](/[^\s\'"\\]*)?', value):
    hint = f' Did you mean {flag}=gs://{value}?' if '://' not in value else ''
    raise UsageError(f"{flag} must be a gs:// URL such as gs://my-bucket (the TPU VM reads and "
                     f"writes it; it cannot reach your laptop), got {value!r}.{hint}")
  return value


def _check_accelerator(value: str) -> TpuFamily:
  match = re.fullmatch(r'([a-z0-9]+)-(\d+)', value)
  family = TPU_FAMILIES.get(match.group(1)) if match else None
  if family is None or not family.valid(int(match.group(2))):
    patterns = '; '.join(f'{name}-N with N in {f.sizes}' for name, f in TPU_FAMILIES.items())
    raise UsageError(f'unknown --accelerator_type {value!r}. Valid patterns: {patterns} '
                     f'(e.g. v3-8, v3-32, v4-16, v5litepod-16).')
  return family


def _source(value: str | None) -> tuple[Path, str | None]:
  """(checkout to ship, pip spec or None to install that checkout)."""
  if value is None:
    return REPO_ROOT, None
  path = Path(value).expanduser()
  if path.is_dir():
    if not (path / 'pyproject.toml').is_file():
      raise UsageError(f'--source {value!r} has no pyproject.toml: point it at a synth-jax '
                       'checkout, or give a pip requirement such as '
                       'git+https://github.com/ORG/synth-jax@REF.')
    return path.resolve(), None
  if path.exists() or value.startswith(('.', '/', '~')):
    raise UsageError(f'--source {value!r} is not a checkout directory: give a synth-jax checkout '
                     'or a pip requirement such as git+https://github.com/ORG/synth-jax@REF.')
  return REPO_ROOT, value


def _resolve_gin(value: str, root: Path) -> str:
  """The gin file's path relative to `root`, which becomes the trainer's cwd on the VM."""
  given = Path(value).expanduser()
  candidates = [given] if given.is_absolute() else [root / d / given for d in GIN_DIRS]
  for candidate in candidates:
    if candidate.is_file():
      resolved = candidate.resolve()
      if not resolved.is_relative_to(root):
        raise UsageError(f'gin file {value!r} is outside the checkout {root}, which is all that is '
                         'copied to the TPU VM: move it into configs/.')
      return resolved.relative_to(root).as_posix()
  available = sorted(p.relative_to(root).as_posix() for p in (root / 'configs').glob('*.gin'))
  raise UsageError(
      f'gin file {value!r} not found; looked at {", ".join(str(c) for c in candidates)}. '
      f'Pass a path relative to the checkout, e.g. --gin_file=configs/c4_pretrain_base.gin'
      + (f' (configs/ has: {", ".join(available)}).' if available else '.'))


def _default_experiment(gin_files: list[str], overrides: list[str]) -> str:
  """Gin file stems, plus a hash of the overrides so different overrides get different dirs."""
  name = '-'.join(Path(g).stem for g in gin_files) or 'run'
  if overrides:
    name += '-' + hashlib.sha256('\n'.join(overrides).encode()).hexdigest()[:8]
  return re.sub(r'[^A-Za-z0-9._-]+', '-', name)


def _default_name(experiment: str) -> str:
  name = re.sub(r'[^a-z0-9]+', '-', f'synth-jax-{experiment}'.lower()).strip('-')
  if len(name) > 63:  # Compute Engine's limit; keep it unique with a hash of the full name
    name = name[:54].rstrip('-') + '-' + hashlib.sha256(experiment.encode()).hexdigest()[:8]
  return name


def _run_dirs(args: argparse.Namespace, experiment: str) -> tuple[str, str]:
  """(MODEL_DIR, TFDS data dir), both on GCS."""
  if not args.bucket:
    raise UsageError('--bucket is required: the GCS bucket for checkpoints and data, e.g. '
                     '--bucket=gs://my-bucket (make one with `gcloud storage buckets create '
                     'gs://my-bucket --location=REGION`, in the TPU zone\'s region).')
  bucket = _check_gs('--bucket', args.bucket)
  return (_check_gs('--model_dir', args.model_dir or f'{bucket}/synth-jax/{experiment}'),
          _check_gs('--tfds_data_dir', args.tfds_data_dir or f'{bucket}/tensorflow_datasets'))


def _jax_version(given: str | None, root: Path) -> tuple[str, str]:
  """(VERSION for jax[tpu]==VERSION on the VM, where it came from in words).

  An unpinned jax[tpu] installs the newest jax, which the code may not have met yet. The laptop
  need not have jax: then the shipped checkout's pyproject.toml gives its lower bound.
  """
  if given is not None:
    if not re.fullmatch(r'\d+(\.\d+)*([a-z.]+\d+)*', given):
      raise UsageError(f'--jax_version must be a version number such as 0.4.35, got {given!r}.')
    return given, '--jax_version'
  try:
    return metadata.version('jax').split('+')[0], 'the jax installed here'  # `+local`: not on PyPI
  except metadata.PackageNotFoundError:
    pass
  pyproject = root / 'pyproject.toml'
  match = re.search(r'''["'](jax(\[[^\]]*\])?\s*(>=|==|~=)\s*(\d[0-9a-z.]*))''',
                    pyproject.read_text() if pyproject.is_file() else '')
  if match is None:
    raise UsageError(f'no jax installed here and no jax version in {pyproject}: name the jax '
                     'version for the TPU VM with --jax_version=VERSION, e.g. '
                     '--jax_version=0.4.35.')
  return match.group(4), f'{match.group(1)} in {pyproject}'


def parse(argv: list[str]) -> Launch:
  """Parses and checks the command line; raises UsageError before anything touches the cloud."""
  parser = _parser()
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for arg in rest:
    if not arg.startswith('--gin.'):
      raise UsageError(f'unrecognized argument {arg!r} (see --help).')
    if '=' not in arg:
      raise UsageError(f'write gin overrides as one argument, {arg}=VALUE.')
    if arg.split('=', 1)[0] == '--gin.MODEL_DIR':
      raise UsageError('do not pass --gin.MODEL_DIR: the launcher sets it from --bucket and '
                       '--experiment so a re-run resumes the same run; use --model_dir=gs://... '
                       'to choose it yourself.')
    overrides.append(arg)

  experiment = args.experiment or _default_experiment(args.gin_file, overrides)
  if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9._-]{0,99}', experiment):
    raise UsageError(f'--experiment {experiment!r} must be letters, digits, ".", "_" or "-" '
                     '(it becomes a directory name in the bucket).')
  if args.name is None and args.mode == 'delete' and not (args.experiment or args.gin_file):
    raise UsageError('delete needs the VM: pass --name=NAME, or the flags you launched with.')
  name = args.name or _default_name(experiment)
  if not re.fullmatch(r'[a-z]([-a-z0-9]{0,61}[a-z0-9])?', name):
    raise UsageError(f'--name {name!r} must be 1-63 lowercase letters, digits or "-", starting '
                     'with a letter and not ending with "-".')
  family = _check_accelerator(args.accelerator_type)
  if args.queued and args.preemptible:
    raise UsageError('queued resources take --spot, not --preemptible.')
  if args.poll_seconds < 0:
    raise UsageError('--poll_seconds must be >= 0.')

  code_root, pip_spec = _source(args.source)
  model_dir = tfds_data_dir = None
  gin_files: tuple[str, ...] = ()
  jax_version = jax_version_from = ''
  if args.mode != 'delete':
    model_dir, tfds_data_dir = _run_dirs(args, experiment)
    if not args.gin_file:
      raise UsageError(f'{args.mode} needs at least one --gin_file, e.g. '
                       '--gin_file=configs/c4_pretrain_base.gin.')
    gin_files = tuple(_resolve_gin(g, code_root) for g in args.gin_file)
    jax_version, jax_version_from = _jax_version(args.jax_version, code_root)
  if not args.dry_run and shutil.which('gcloud') is None:
    raise UsageError('gcloud is not on PATH: install the Google Cloud CLI '
                     '(https://cloud.google.com/sdk/docs/install), then `gcloud auth login`.')

  return Launch(
      mode=args.mode, name=name, zone=args.zone, project=args.project,
      accelerator_type=args.accelerator_type,
      runtime_version=args.runtime_version or family.runtime,
      spot=args.spot, preemptible=args.preemptible, queued=args.queued, experiment=experiment,
      model_dir=model_dir, tfds_data_dir=tfds_data_dir, gin_files=gin_files,
      overrides=tuple(overrides), code_root=code_root, pip_spec=pip_spec,
      jax_version=jax_version, jax_version_from=jax_version_from,
      archive=Path(tempfile.gettempdir()) / f'{name}.tar.gz', detach=args.detach,
      poll_seconds=args.poll_seconds, dry_run=args.dry_run)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def gcloud(cfg: Launch, group: str, verb: str, *args: str) -> list[str]:
  """`gcloud compute tpus GROUP VERB ARGS` in cfg's zone/project, never prompting."""
  where = ([f'--zone={cfg.zone}'] if cfg.zone else []) + (
      [f'--project={cfg.project}'] if cfg.project else [])
  return ['gcloud', 'compute', 'tpus', group, verb, *args, *where, '--quiet']


def ssh(cfg: Launch, worker: str, command: str) -> list[str]:
  return gcloud(cfg, 'tpu-vm', 'ssh', cfg.name, f'--worker={worker}', f'--command={command}')


def shell_word(word: str) -> str:
  """`word` quoted for a POSIX shell so a person can read it: `"--gin.X='a'"`, a script as a
  here-document; shlex.quote would write each `'` as `'"'"'`, and nested, `'"'"'"'"'"'"'"'"'`."""
  if "'" not in word:
    return shlex.quote(word)
  if not re.search(r'["$`\\!\n]', word):
    return f'"{word}"'
  flag, value = re.fullmatch(r'(--[\w.-]+=)?(.*)', word, re.DOTALL).groups()
  if value.endswith('\n'):  # `$(...)` would drop it
    return shlex.quote(word)
  tag = 'EOF'
  while tag in value.split('\n'):
    tag += '_'
  return f'{flag or ""}"$(cat <<\'{tag}\'\n{value}\n{tag}\n)"'


def shell_line(argv: list[str]) -> str:
  """The command as it would be typed: paste it into a shell and it runs `argv`."""
  return ' '.join(shell_word(a) for a in argv)


def tar_command(cfg: Launch) -> list[str]:
  # Members are `./...` so no exclude pattern can match the checkout's own directory name.
  shipped = sorted(f'./{p.name}' for p in cfg.code_root.iterdir()
                   if p.name not in TOP_LEVEL_EXCLUDES)
  return ['tar', '-czf', str(cfg.archive), *(f'--exclude={p}' for p in TAR_EXCLUDES),
          '-C', str(cfg.code_root), *shipped]


# Whether session $1 (the run started by start_command) has a live process. Zombies do not count:
# where nothing reaps orphans promptly, `kill -0` would call a finished run alive.
_RUNNING = 'running() { ps -o stat= --sid "$1" 2>/dev/null | grep -q "^[^Z]"; }'


def install_command(pip_spec: str | None, jax_version: str) -> str:
  """Stops an earlier run, unpacks the checkout, installs synth-jax and jax[tpu]==jax_version."""
  target = REMOTE_TREE if pip_spec is None else shell_word(pip_spec)
  return '\n'.join([
      'set -e',
      _RUNNING,
      # The TPU admits one process. SIGTERM first: the trainer checkpoints before exiting.
      f'if [ -f {REMOTE_PID} ]; then pid=$(cat {REMOTE_PID})',
      '  if running "$pid"; then',
      '    echo "$(hostname): stopping the synth-jax run started earlier (pid $pid)"',
      '    kill -TERM -- "-$pid" || true; i=0',
      '    while running "$pid" && [ "$i" -lt 600 ]; do sleep 0.5; i=$((i + 1)); done',
      '    if running "$pid"; then kill -KILL -- "-$pid" || true; fi',
      f'  fi; rm -f {REMOTE_PID}',
      'fi',
      f'rm -rf {REMOTE_TREE}',
      f'mkdir {REMOTE_TREE}',
      f'tar -xzf ~/{REMOTE_ARCHIVE} -C {REMOTE_TREE}',
      # pip keeps an installed synth-jax of the same version even when a git ref moved on.
      'python3 -m pip uninstall --yes --quiet synth-jax || true',
      f'python3 -m pip install {target} "jax[tpu]=={jax_version}" --find-links {LIBTPU_FIND_LINKS}',
  ])


def start_command(cfg: Launch) -> str:
  """Starts the trainer in its own session, so it outlives the ssh connection."""
  trainer = shell_line(['synth-jax', cfg.mode, *cfg.trainer_args()])
  return '\n'.join([
      'set -e',
      f'cd {REMOTE_TREE}',
      'export PATH="$HOME/.local/bin:$PATH"',  # where a non-root `pip install` puts synth-jax
      f'rm -f {cfg.exit_file}',
      # The trainer's argv is the inner script's "$@": quoted once, not once per shell.
      f"setsid nohup bash -c '\"$@\"; echo $? > {cfg.exit_file}' bash {trainer} "
      f'> {cfg.log_file} 2>&1 < /dev/null & echo $! > {REMOTE_PID}',
      f'echo "$(hostname): started synth-jax {cfg.mode} (pid $(cat {REMOTE_PID})), '
      f'log {cfg.log_file}"',
  ])


def follow_command(cfg: Launch) -> str:
  """Prints the log until the run ends, then exits with the trainer's exit status."""
  return '\n'.join([
      _RUNNING,
      f'pid=$(cat {REMOTE_PID})',
      # tail prints the rest and stops soon after the watcher does (it checks every 0.1 s, a
      # cheap kill(2)); the watcher is this shell's child, so it is reaped promptly.
      f'( while [ ! -f {cfg.exit_file} ] && running "$pid"; do sleep 1; done ) & '
      f'tail -n +1 -F -s 0.1 --pid=$! {cfg.log_file}',
      f'if [ -f {cfg.exit_file} ]; then exit "$(cat {cfg.exit_file})"; fi',
      f'echo "synth-jax {cfg.mode} stopped without an exit status (killed, or the VM went down)" '
      '>&2',
      'exit 1',
  ])


def tail_command(cfg: Launch) -> list[str]:
  """What a researcher runs to look at a running job's log again."""
  return ssh(cfg, '0', f'tail -n 100 -F {cfg.log_file}')


# ---------------------------------------------------------------------------------------------
# Running them
# ---------------------------------------------------------------------------------------------


def say(message: str) -> None:
  print(f'[launch] {message}', file=sys.stderr, flush=True)


class Shell:
  """Runs commands, or with dry_run prints them (stdout, as shell input) and runs nothing."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def _show(self, argv: list[str]) -> None:
    if self.dry_run:
      print(shell_line(argv), flush=True)
    else:
      print(f'+ {shell_line(argv)}', file=sys.stderr, flush=True)

  def run(self, argv: list[str]) -> int:
    self._show(argv)
    if self.dry_run:
      return 0
    env = dict(os.environ, COPYFILE_DISABLE='1')  # macOS tar: no ._* resource-fork files
    return subprocess.run(argv, env=env).returncode

  def check(self, argv: list[str]) -> None:
    status = self.run(argv)
    if status:
      raise LaunchError(f'`{" ".join(argv[:5])} ...` failed with exit status {status} '
                        '(its output is above).')

  def query(self, argv: list[str], assume: str | None) -> str | None:
    """The command's stdout, or None when gcloud says NOT_FOUND; `assume` under dry_run."""
    self._show(argv)
    if self.dry_run:
      return assume
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode == 0:
      return done.stdout.strip()
    if 'NOT_FOUND' in done.stderr:
      return None
    raise LaunchError(f'`{" ".join(argv[:6])}` failed:\n{done.stderr.strip()}')


def node_state(cfg: Launch, sh: Shell, assume: str | None) -> str | None:
  """The TPU VM's state, or None when it does not exist; refuses a VM of another size."""
  out = sh.query(gcloud(cfg, 'tpu-vm', 'describe', cfg.name,
                        '--format=value(state,acceleratorType)'), assume)
  if out is None:
    return None
  state, accelerator = (out.split() + [''])[:2]  # `value()` separates fields with a tab
  if accelerator and accelerator != cfg.accelerator_type and state not in NODE_LOST:
    raise LaunchError(f'TPU VM {cfg.name} exists as {accelerator}, not {cfg.accelerator_type}: '
                      f'delete it first (python launch/tpu.py delete --name={cfg.name} ...) or '
                      'pass another --name.')
  return state


def wait_for(sh: Shell, what: str, poll: Callable[[], str | None], want: str,
             pending: tuple[str, ...], seconds: float) -> None:
  while (state := poll()) != want:
    if state not in pending:
      raise LaunchError(f'{what} is {state or "gone"}, not {want}. Inspect it with '
                        '`gcloud compute tpus ... describe`, delete it with '
                        '`python launch/tpu.py delete ...`, and re-run.')
    say(f'{what} is {state}; checking again in {seconds:g}s')
    time.sleep(seconds)


def create_vm(cfg: Launch, sh: Shell) -> None:
  """Reuses a READY VM, recreates a preempted one, creates a missing one."""
  create = gcloud(cfg, 'tpu-vm', 'create', cfg.name, f'--accelerator-type={cfg.accelerator_type}',
                  f'--version={cfg.runtime_version}', *(['--spot'] if cfg.spot else []),
                  *(['--preemptible'] if cfg.preemptible else []))
  state = node_state(cfg, sh, assume=None)
  if state in NODE_PENDING:
    wait_for(sh, f'TPU VM {cfg.name}', lambda: node_state(cfg, sh, assume='READY'), 'READY',
             NODE_PENDING, cfg.poll_seconds)
    state = 'READY'
  if state == 'READY':
    say(f'reusing TPU VM {cfg.name}')
    return
  if state in NODE_LOST:
    say(f'TPU VM {cfg.name} is {state}: deleting and recreating it')
    sh.check(gcloud(cfg, 'tpu-vm', 'delete', cfg.name))
  elif state is not None:
    raise LaunchError(f'TPU VM {cfg.name} is {state}; wait for it to settle, or delete it '
                      f'(python launch/tpu.py delete --name={cfg.name} ...), and re-run.')
  sh.check(create)


def create_queued(cfg: Launch, sh: Shell) -> None:
  """Like create_vm, through a queued resource named like the VM; waits until it is ACTIVE."""
  describe = gcloud(cfg, 'queued-resources', 'describe', cfg.name, '--format=value(state.state)')
  delete = gcloud(cfg, 'queued-resources', 'delete', cfg.name, '--force')
  state = sh.query(describe, assume=None)
  if state == 'ACTIVE':
    node = node_state(cfg, sh, assume='READY')
    if node == 'READY':
      say(f'reusing TPU VM {cfg.name} of queued resource {cfg.name}')
      return
    say(f'queued resource {cfg.name} is ACTIVE but its TPU VM is {node or "gone"}: recreating')
    sh.check(delete)
    state = None
  elif state in QR_LOST:
    say(f'queued resource {cfg.name} is {state}: deleting it and queueing again')
    sh.check(delete)
    state = None
  elif state is not None and state not in QR_PENDING:
    raise LaunchError(f'queued resource {cfg.name} is {state}; wait a minute and re-run.')
  if state is None:
    sh.check(gcloud(cfg, 'queued-resources', 'create', cfg.name, f'--node-id={cfg.name}',
                    f'--accelerator-type={cfg.accelerator_type}',
                    f'--runtime-version={cfg.runtime_version}',
                    *(['--spot'] if cfg.spot else [])))
  wait_for(sh, f'queued resource {cfg.name}', lambda: sh.query(describe, assume='ACTIVE'),
           'ACTIVE', QR_PENDING, cfg.poll_seconds)


def launch(cfg: Launch, sh: Shell) -> int:
  say(f'experiment {cfg.experiment}: MODEL_DIR={cfg.model_dir}, TFDS_DATA_DIR={cfg.tfds_data_dir}')
  say(f'TPU VM {cfg.name}: {cfg.accelerator_type} ({cfg.hosts} host{"s" * (cfg.hosts > 1)}), '
      f'{cfg.runtime_version}' + (', spot' if cfg.spot else '') +
      (', preemptible' if cfg.preemptible else '') + (', queued' if cfg.queued else ''))
  say(f'jax[tpu]=={cfg.jax_version} on the VM, from {cfg.jax_version_from}'
      + ('' if cfg.jax_version_from == '--jax_version' else ' (--jax_version=VERSION overrides)'))
  sh.check(tar_command(cfg))
  (create_queued if cfg.queued else create_vm)(cfg, sh)
  sh.check(gcloud(cfg, 'tpu-vm', 'scp', str(cfg.archive), f'{cfg.name}:{REMOTE_ARCHIVE}',
                  '--worker=all'))
  sh.check(ssh(cfg, 'all', install_command(cfg.pip_spec, cfg.jax_version)))
  sh.check(ssh(cfg, 'all', start_command(cfg)))
  reattach = f'follow the log again with: {shell_line(tail_command(cfg))}'
  if cfg.detach:
    say(f'{cfg.mode} runs on {cfg.name}; {reattach}')
    return 0
  try:
    status = sh.run(ssh(cfg, '0', follow_command(cfg)))
  except KeyboardInterrupt:
    say(f'stopped following; {cfg.mode} goes on running on {cfg.name}. To {reattach}')
    return 130
  if status == 0:
    return 0
  state = node_state(cfg, sh, assume='READY')
  if state is None or state in NODE_LOST:
    say(f'TPU VM {cfg.name} was preempted ({state or "gone"}). Re-run this command: it recreates '
        'the VM and the trainer resumes from the latest checkpoint in MODEL_DIR.')
    return EXIT_PREEMPTED
  say(f'synth-jax {cfg.mode} ended with status {status} (255: the ssh connection broke); the log '
      f'is above and in {cfg.log_file} on each worker.')
  return status


def delete(cfg: Launch, sh: Shell) -> int:
  """Deletes the queued resource (with its VM) if there is one, else the VM."""
  if sh.query(gcloud(cfg, 'queued-resources', 'describe', cfg.name,
                     '--format=value(state.state)'), assume='ACTIVE' if cfg.queued else None):
    sh.check(gcloud(cfg, 'queued-resources', 'delete', cfg.name, '--force'))
    say(f'deleted queued resource {cfg.name} and its TPU VM')
  elif sh.query(gcloud(cfg, 'tpu-vm', 'describe', cfg.name, '--format=value(state)'),
                assume='READY'):
    sh.check(gcloud(cfg, 'tpu-vm', 'delete', cfg.name))
    say(f'deleted TPU VM {cfg.name}')
  else:
    say(f'nothing to delete: no TPU VM or queued resource named {cfg.name}')
  return 0


def main(argv: list[str] | None = None) -> int:
  try:
    cfg = parse(sys.argv[1:] if argv is None else argv)
  except UsageError as e:
    print(f'python launch/tpu.py: error: {e}', file=sys.stderr)
    return 2
  sh = Shell(cfg.dry_run)
  try:
    return delete(cfg, sh) if cfg.mode == 'delete' else launch(cfg, sh)
  except LaunchError as e:
    print(f'python launch/tpu.py: error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    say('interrupted; re-running the same command picks up where this one stopped')
    return 130


if __name__ == '__main__':
  sys.exit(main())
