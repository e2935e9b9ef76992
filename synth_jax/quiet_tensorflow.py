"""TensorFlow, imported without the notices it prints to stderr and kept off GPUs.

TensorFlow serves only the input pipeline (seqio, TFDS). Commands import it after they have
parsed their flags and made their early checks (`preflight.py`), so help and one-line errors
come without it.
"""
import os
import sys


def load():
  """TensorFlow serves only our input pipeline. At import and when it probes for a GPU it prints
  C++ notices (oneDNN, CPU features, missing CUDA drivers) that no user can act on; import it
  with stderr silenced, and keep it off GPUs, which belong to JAX. An import error still raises
  (after stderr is back)."""
  if 'tensorflow' in sys.modules:
    return
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)
