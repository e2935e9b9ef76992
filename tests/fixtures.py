"""The tests' one tiny T5 (config and model), noise-filled variables and a tiny in-memory seqio
copy task."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from synth_jax import network
from tests import fast_compile

COPY_TASK = 'synth_jax_test_copy'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# gin flags that cut `gin/models/t5_1_1_tiny.gin` (and the demo) from 2+2 layers to 1+1: every
# code path still runs, and the train step compiles in about two thirds of the time.
ONE_LAYER_FLAGS = ('--gin.synth_jax.network.T5Config.num_encoder_layers=1',
                   '--gin.synth_jax.network.T5Config.num_decoder_layers=1')
LENGTHS = {'inputs': 16, 'targets': 16}


def tiny_config(attention_type='vanilla', dropout_rate=0.0, max_length=16, **overrides):
  """One encoder and one decoder layer: enough to exercise every code path, quick to compile.

  `attention_type` sets encoder and decoder self-attention and `max_length` both max lengths;
  `overrides` set any `T5Config` field, e.g. `decoder_attention` alone or `max_decoder_length`.
  """
  options = dict(vocab_size=384, emb_dim=32, num_heads=2, head_dim=16,
                 num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64, dropout_rate=dropout_rate,
                 encoder_attention=attention_type, decoder_attention=attention_type,
                 max_encoder_length=max_length, max_decoder_length=max_length)
  options.update(overrides)
  return network.T5Config(**options)


def noise_like(shapes, rng: np.random.Generator):
  """Arrays of `shapes` (a tree of `jax.ShapeDtypeStruct`s, e.g. `jax.eval_shape` of an `init`)
  filled with Gaussian noise of std 1/sqrt(fan_in), drawn from `rng`.

  For properties that hold for any parameter values (one path equals another, masking, decode
  == full forward): only shapes are traced, which skips the eager compilation of every
  initializer; real initialization is covered by the tests that call `init`.
  """
  fill = lambda x: jnp.asarray(rng.normal(size=x.shape) / np.sqrt(x.shape[0]), x.dtype)
  return jax.tree.map(fill, shapes)


def tiny_model(attention_type='vanilla', attention_execution='fast', **overrides):
  """A `Transformer` of `tiny_config(attention_type, **overrides)`."""
  return network.Transformer(tiny_config(attention_type, **overrides),
                             attention_execution=attention_execution)


def subprocess_env() -> dict[str, str]:
  """The environment of a test's subprocess: CPU only, one device, compiling fast, importing
  this checkout."""
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ' '.join(fast_compile.XLA_FLAGS),
          'PYTHONPATH': REPO}


def _copy_examples(split, shuffle_files, seed=None):
  del shuffle_files, seed
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0 if split == 'train' else 1)
  words = [''.join(rng.choice(list('abcdefgh'), size=rng.integers(2, 6))) for _ in range(256)]
  texts = [' '.join(words[i:i + 2]) for i in range(0, len(words) - 1)]
  return tf.data.Dataset.from_tensor_slices({'inputs': texts, 'targets': texts})


def register_copy_task():
  """`synth_jax_test_copy`: targets equal inputs (bytes). Idempotent."""
  # seqio (and TensorFlow) are imported here, so tests that need only the tiny model skip them.
  import seqio  # pylint: disable=g-import-not-at-top
  if COPY_TASK in seqio.TaskRegistry.names():
    return COPY_TASK
  vocab = seqio.ByteVocabulary()
  features = {k: seqio.Feature(vocab, add_eos=True) for k in ('inputs', 'targets')}
  seqio.TaskRegistry.add(
      COPY_TASK,
      source=seqio.FunctionDataSource(_copy_examples, splits=('train', 'validation')),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features)
  return COPY_TASK
