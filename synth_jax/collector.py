"""Heavy imports with Python's garbage collector paused, and their objects frozen after.

Importing TensorFlow, jax, flax, seqio and orbax creates millions of objects that live as long
as the process. With the collector on, every full collection during the imports scans all of
them made so far, and every later one scans them again. Paused, the trainer's imports take a
quarter less time (3.1-3.3 s instead of 4.0-4.4 s on 2 idle cores, `benchmarks/import_time/`);
`gc.freeze()` then moves them to a generation the collector never scans, which also shortens
the collections of the run itself.
"""
import contextlib
import gc


@contextlib.contextmanager
def paused():
  """Runs the block with the collector off, then freezes every object alive and restores the
  collector's state. Reference counting still frees what is not in a cycle."""
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    yield
  finally:
    gc.freeze()
    if was_enabled:
      gc.enable()
