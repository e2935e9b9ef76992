"""Decode-based task metrics, and the finetune flow: pretrain -> finetune on GLUE -> metrics."""
import jax
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from synth_jax import optimizer as optimizer_lib
from synth_jax import train
from synth_jax.tasks import glue
from synth_jax.tasks import vocabularies
from tests import fixtures

LENGTHS = {'inputs': 64, 'targets': 8}


@pytest.mark.slow
def test_finetune_from_pretrained_checkpoint_reports_glue_metrics(tmp_path, monkeypatch):
  # TFDS mock data has no split metadata, which seqio's Evaluator reads to size its cache.
  monkeypatch.setattr(seqio.TfdsDataSource, 'num_input_examples', lambda self, split: 16)
  glue.register(vocabularies.byte_vocabulary())
  try:
    model = fixtures.tiny_model('dense', max_length=64)
    common = dict(model=model, batch_size=8, log_period=100, eval_steps=1,
                  learning_rate=optimizer_lib.constant_schedule(1e-3))
    pretrain = train.train(model_dir=str(tmp_path / 'pretrain'),
                           mixture_or_task_name=fixtures.register_copy_task(),
                           task_feature_lengths=LENGTHS, train_steps=2, eval_period=0, **common)
    checkpoint = str(tmp_path / 'pretrain' / 'checkpoints' / '2')
    with tfds.testing.mock_data(num_examples=16):
      start = train.train(model_dir=str(tmp_path / 'start'), mixture_or_task_name='synth_jax_glue_cola',
                          task_feature_lengths=LENGTHS, train_steps=0, eval_period=0,
                          initial_checkpoint_path=checkpoint, **common)
      finetuned = train.train(model_dir=str(tmp_path / 'finetune'),
                              mixture_or_task_name='synth_jax_glue_cola',
                              task_feature_lengths=LENGTHS, train_steps=2, eval_period=2,
                              metric_examples=16, initial_checkpoint_path=checkpoint, **common)
  finally:
    glue.register()  # back to the default vocabulary
  # Finetuning starts from the pretrained parameters, with a fresh step.
  assert start['step'] == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(start['state'].params),
               jax.device_get(pretrain['state'].params))
  assert finetuned['step'] == 2
  cola = finetuned['eval']['tasks']['synth_jax_glue_cola']
  assert set(cola) == {'matthews_corrcoef'}
  assert -100.0 <= cola['matthews_corrcoef'] <= 100.0  # T5 reports metrics x100
  assert np.isfinite(finetuned['eval']['loss'])
