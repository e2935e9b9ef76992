"""Test setup: CPU only, with the host platform split into 4 fake devices.

These variables must be set before jax is imported anywhere, so they live at the
top of the root conftest, which pytest imports before any test module.
"""
import os

# SYNTH_JAX_TESTS_ON_ACCELERATOR=1 keeps the machine's GPU visible, for the few tests that
# need one (e.g. the cuDNN kernel's); they skip on the CPU.
if os.environ.get("SYNTH_JAX_TESTS_ON_ACCELERATOR") != "1":
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
_flag = "--xla_force_host_platform_device_count=4"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Identical computations (the same tiny model trained by several tests) compile once per session.
import tempfile  # pylint: disable=g-import-not-at-top,g-bad-import-order
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'synth_jax_test_jax_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
