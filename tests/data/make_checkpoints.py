"""Writes the checkpoints `tests/test_checkpoint_compat.py` restores: trainer checkpoints of tiny
models, and the logits each gives on a fixed batch.

The committed copies were written by synth-jax at e07cab6 (before the attention redesign), so
the test proves that checkpoints from that code still restore. Rerun only to add a type:

  python -m tests.data.make_checkpoints tests/data/checkpoints_e07cab6
"""
import os
import sys

import jax
import numpy as np

from synth_jax import optimizer as optimizer_lib
from synth_jax import train
from synth_jax import train_state
from tests import fixtures

TYPES = ('vanilla', 'orthogonal', 'random+vanilla')


def fixed_batch():
  rng = np.random.default_rng(7)
  tokens = rng.integers(2, 200, size=(2, 16)).astype(np.int32)
  tokens[1, -5:] = 0
  shifted = np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], axis=1)
  return {'encoder_input_tokens': tokens, 'decoder_input_tokens': shifted,
          'decoder_target_tokens': tokens}


def main(out):
  for attention_type in TYPES:
    model_dir = os.path.join(out, attention_type.replace('+', '_'))
    result = train.train(
        model_dir=model_dir, model=fixtures.tiny_model(attention_type),
        mixture_or_task_name=fixtures.register_copy_task(),
        task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=2, log_period=100,
        checkpoint_period=2, eval_period=0, learning_rate=optimizer_lib.rsqrt_schedule(1.0, 100))
    logits = fixtures.tiny_model(attention_type).apply(
        jax.device_get(result['state'].variables()),
        **train_state.model_inputs(fixed_batch()), enable_dropout=False)
    np.save(os.path.join(model_dir, 'logits.npy'), np.asarray(logits))


if __name__ == '__main__':
  main(sys.argv[1])
