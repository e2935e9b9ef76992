"""Test setup: CPU only, with the host platform split into 4 fake devices.

These variables must be set before jax is imported anywhere, so they live at the
top of the root conftest, which pytest imports before any test module.
"""
import os

# SYNTH_JAX_TESTS_ON_ACCELERATOR=1 keeps the machine's GPU visible, for the few tests that
# need one (e.g. the cuDNN kernel's); they skip on the CPU.
_flags = ["--xla_force_host_platform_device_count=4"]
if os.environ.get("SYNTH_JAX_TESTS_ON_ACCELERATOR") != "1":
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
  from tests import fast_compile  # pylint: disable=g-import-not-at-top
  _flags.extend(fast_compile.XLA_FLAGS)
for _flag in _flags:
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Identical computations (the same tiny model trained by several tests) compile once per session.
# Every program is kept, the tiniest too: keeping only those compiling in 50 ms or more made the
# suite slower, 6:24 -> 6:49 from an empty cache and 4:22 -> 5:17 with it (2 cores, 2026-12-07),
# as the tiny ones then recompile after each release below.
import tempfile  # pylint: disable=g-import-not-at-top,g-bad-import-order
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'synth_jax_test_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


import ctypes  # pylint: disable=g-import-not-at-top,g-bad-import-order
import gc  # pylint: disable=g-import-not-at-top,g-bad-import-order
import sys  # pylint: disable=g-import-not-at-top,g-bad-import-order

import pytest  # pylint: disable=g-import-not-at-top,g-bad-import-order

# Every compiled program stays in jax's caches for the life of the process (eager ops included:
# thousands per worker, 0.1-1 MB of machine code each), which took a worker past 5 GB. They are
# dropped whenever the process has grown by this much since the last drop (dropping them after
# every module instead costs about a second each time); a program a later test needs again comes
# back from the persistent cache above.
RELEASE_AFTER_GROWTH_BYTES = 2 ** 30
_released_at = []


def _resident_bytes():
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
  except OSError:  # not Linux: no measure, no release
    return 0


def _release_compiled_programs():
  sys.modules['jax'].clear_caches()
  gc.collect()
  try:  # glibc keeps freed memory in its arenas; hand it back to the system
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass


def pytest_configure(config):
  del config
  gc.disable()  # collection imports TensorFlow, jax and seqio: see pytest_collection_finish


def pytest_collection_finish(session):
  """What collection imported lives as long as the worker: frozen, the garbage collector stops
  scanning it again and again (`synth_jax/collector.py`; test_network and test_dispatch ran in
  82 s instead of 88 s in one process)."""
  del session
  gc.freeze()
  gc.enable()


# The slow end-to-end tests (marked `slow`: real processes, the CLI end to end, training to a
# threshold) run where this is '1', as `.ci/run` sets it, or under any `-m` expression; a plain
# `pytest` on a laptop skips them, saying how to run them.
RUN_SLOW_TESTS = 'SYNTH_JAX_SLOW_TESTS'


def pytest_collection_modifyitems(config, items):
  """The slow end-to-end tests first (a stable sort): a 35 s test started last would run on one
  worker while the other idles; started first, the short tests fill the other worker around it.
  Skipped unless asked for (`RUN_SLOW_TESTS`)."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)
  if os.environ.get(RUN_SLOW_TESTS) == '1' or config.getoption('markexpr'):
    return
  skip = pytest.mark.skip(reason=f'slow end-to-end test: {RUN_SLOW_TESTS}=1 pytest runs it, '
                                 'as .ci/run does')
  for item in items:
    if item.get_closest_marker('slow') is not None:
      item.add_marker(skip)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
  del item, nextitem
  if not _released_at:
    _released_at.append(_resident_bytes())
  if 'jax' in sys.modules and _resident_bytes() > _released_at[0] + RELEASE_AFTER_GROWTH_BYTES:
    _release_compiled_programs()
    _released_at[0] = _resident_bytes()


def _peak_resident_gib():
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


_worker_peaks = []


def pytest_sessionfinish(session):
  if hasattr(session.config, 'workeroutput'):  # an xdist worker: its peak goes to the controller
    session.config.workeroutput['peak_resident_gib'] = _peak_resident_gib()


def pytest_testnodedown(node, error):
  del error
  if 'peak_resident_gib' in getattr(node, 'workeroutput', {}):
    _worker_peaks.append(node.workeroutput['peak_resident_gib'])


def pytest_terminal_summary(terminalreporter):
  peaks = _worker_peaks or [_peak_resident_gib()]
  terminalreporter.write_line('peak resident memory per test process: ' +
                              ', '.join(f'{p:.2f} GiB' for p in sorted(peaks, reverse=True)))
