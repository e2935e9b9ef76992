"""`synth-jax attention-maps` on a tiny trained checkpoint, and the capture it rests on."""
import json
import math
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import attention
from synth_jax import checkpoints
from synth_jax import cli
from synth_jax.diagnostics import attention_maps
from tests import fixtures

ATTENTION_TYPE = 'orthogonal+random'  # frozen projections, a skipped synthesizer, a mixture
STACKS = ('encoder_self', 'decoder_self', 'cross')


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
  """A MODEL_DIR trained 2 steps on the copy task: 2 encoder and 2 decoder layers."""
  fixtures.register_copy_task()
  model_dir = str(tmp_path_factory.mktemp('attention_maps') / 'run')
  gin.clear_config()
  cli.main([
      'train', '--gin_file=models/t5_1_1_tiny.gin', '--gin_file=runs/train.gin',
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{fixtures.COPY_TASK}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", '--gin.TRAIN_STEPS=2',
      '--gin.BATCH_SIZE=8', '--gin.VOCAB_SIZE=384', '--gin.EVAL_PERIOD=0',
      f"--gin.ATTENTION_TYPE='{ATTENTION_TYPE}'",
      '--gin.synth_jax.network.T5Config.max_encoder_length=16',
      '--gin.synth_jax.network.T5Config.max_decoder_length=16'])
  gin.clear_config()
  return model_dir


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_attention_maps_draws_every_layer_and_stack_of_a_trained_checkpoint(trained_run, tmp_path):
  out = str(tmp_path / 'maps')
  status = attention_maps.main([f"--gin.MODEL_DIR='{trained_run}'",  # its config.gin is read
                                '--out', out, '--examples', '2', '--max_length', '12'])
  assert status == 0
  expected = {f'{stack}_layer{i}.png' for stack in STACKS for i in range(2)}
  assert set(os.listdir(out)) == expected | {'maps.json'}
  for name in expected:
    with open(os.path.join(out, name), 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  report = json.load(open(os.path.join(out, 'maps.json')))
  assert (report['step'], report['lengths']) == (2, {'inputs': 12, 'targets': 12})
  assert report['attention'] == {'encoder_self': ATTENTION_TYPE, 'decoder_self': ATTENTION_TYPE,
                                 'cross': 'vanilla'}
  assert len(report['examples']) == 2 and all(e['inputs'] for e in report['examples'])
  assert {layer['png'] for layer in report['layers']} == expected
  for layer in report['layers']:
    assert layer['shape'] == [2, 2, 12, 12]
    entropy, ceiling = np.array(layer['entropy']), np.array(layer['max_entropy'])
    assert np.all(entropy >= 0) and np.all(entropy <= ceiling + 1e-6)
    assert np.all(ceiling <= math.log(12) + 1e-9)
    assert np.all((np.array(layer['normalized_entropy']) >= 0) &
                  (np.array(layer['normalized_entropy']) <= 1 + 1e-6))
    assert 0 <= layer['mean_head_similarity'] <= 1 + 1e-9
  # Causal decoder queries see fewer keys on average than the bidirectional encoder's.
  by_png = {layer['png']: layer for layer in report['layers']}
  assert (by_png['decoder_self_layer0.png']['max_entropy'][0]
          < by_png['encoder_self_layer0.png']['max_entropy'][0])

  spectra = report['projection_spectra']
  assert sorted(spectra) == sorted(
      [f'encoder/layers_{i}/attention/orthogonal' for i in range(2)] +
      [f'decoder/layers_{i}/self_attention/orthogonal' for i in range(2)] +
      [f'decoder/layers_{i}/encoder_decoder_attention' for i in range(2)])  # random: skipped
  frozen = spectra['encoder/layers_0/attention/orthogonal']
  np.testing.assert_allclose(frozen['query_key']['condition_number'], 1.0, atol=1e-4)
  assert spectra['decoder/layers_0/encoder_decoder_attention']['collection'] == 'params'


def test_captured_cross_attention_equals_the_modules_own_probabilities():
  """The interceptor hands `probabilities` the very inputs the layer sees: recompute one layer's
  map from intermediates captured independently and compare."""
  model = fixtures.tiny_model('vanilla')
  encoder_tokens = jnp.array([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
  targets = jnp.array([[5, 6, 7, 0], [9, 10, 11, 12]])
  decoder_inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))
  inputs = dict(encoder_input_tokens=encoder_tokens, decoder_input_tokens=decoder_inputs,
                decoder_target_tokens=targets, enable_dropout=False)
  variables = nn.unbox(model.init(jax.random.key(0), **inputs))
  captured = attention_maps.capture_probabilities(model, variables, **inputs)
  assert [c['path'] for c in captured] == [
      ('encoder', 'layers_0', 'attention'), ('decoder', 'layers_0', 'self_attention'),
      ('decoder', 'layers_0', 'encoder_decoder_attention')]

  _, state = model.apply(variables, **inputs, capture_intermediates=True,
                         mutable=['intermediates'])
  sown = state['intermediates']
  queries = sown['decoder']['layers_0']['pre_cross_attention_layer_norm']['__call__'][0]
  encoded = sown['encoder']['encoder_norm']['__call__'][0]
  cross = attention.build('vanilla', num_heads=2, head_dim=16)
  mask = attention.Mask.for_cross_attention(targets > 0, encoder_tokens)
  expected = cross.apply(
      {'params': variables['params']['decoder']['layers_0']['encoder_decoder_attention']},
      queries, encoded, mask, None, method='probabilities')
  np.testing.assert_allclose(captured[2]['probabilities'], expected, rtol=1e-6, atol=1e-7)
  # Padding: the padding target's row is not a valid query, and valid ones give padding keys 0.
  np.testing.assert_array_equal(captured[2]['query_valid'], targets > 0)
  assert np.all(captured[2]['probabilities'][0, :, :3, 4:] == 0)
  # Causal decoder self-attention: nothing above the diagonal in any valid query's row.
  self_maps = captured[1]['probabilities'] * np.asarray(targets > 0)[:, None, :, None]
  assert np.all(self_maps * np.triu(np.ones((4, 4)), 1) == 0)


def test_a_model_dir_without_checkpoints_is_a_clear_error(tmp_path):
  fixtures.register_copy_task()
  with pytest.raises(checkpoints.CheckpointError, match='has none'):
    attention_maps.main([
        '--gin_file=models/t5_1_1_tiny.gin', '--gin_file=runs/train.gin',
        f"--gin.MODEL_DIR='{tmp_path}'", f"--gin.MIXTURE_OR_TASK_NAME='{fixtures.COPY_TASK}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", '--gin.TRAIN_STEPS=2',
        '--gin.BATCH_SIZE=8', '--gin.VOCAB_SIZE=384', '--out', str(tmp_path / 'maps')])


def save_initialized(model_dir, model, inputs, steps):
  """Checkpoints of `model`'s initial variables (plus an optimizer-like state) at `steps`."""
  variables = nn.unbox(model.init(jax.random.key(0), **inputs))
  state = {'step': jnp.array(0), 'params': variables['params'],
           'frozen': variables.get('frozen', {}), 'opt_state': {'count': jnp.zeros((3,))}}
  manager = checkpoints.Manager(model_dir, period=1, keep=None)
  for step in steps:
    manager.maybe_save(step, state)
  manager.wait()
  return variables


def tiny_inputs():
  tokens = jnp.array([[5, 6, 7, 0]])
  return dict(encoder_input_tokens=tokens, decoder_input_tokens=tokens,
              decoder_target_tokens=tokens)


def test_restore_reads_params_and_frozen_of_the_latest_step(tmp_path):
  model = fixtures.tiny_model('orthogonal')
  saved = save_initialized(str(tmp_path), model, tiny_inputs(), steps=(1, 3))
  restored, step = attention_maps.restore_variables(model, str(tmp_path), tiny_inputs())
  assert step == 3 and set(restored) == {'params', 'frozen'}
  jax.tree.map(np.testing.assert_array_equal, restored, saved)
  assert attention_maps.restore_variables(model, str(tmp_path), tiny_inputs(), step=1)[1] == 1


def test_a_model_that_does_not_fit_the_checkpoint_names_the_runs_config(tmp_path):
  save_initialized(str(tmp_path), fixtures.tiny_model('orthogonal'), tiny_inputs(), steps=(1,))
  with pytest.raises(checkpoints.CheckpointError, match='holds a different model'):
    attention_maps.restore_variables(fixtures.tiny_model('vanilla'), str(tmp_path),
                                     tiny_inputs())
