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
DRAW = attention_maps.draw  # the real one, for tests that record its figures


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


@pytest.mark.slow
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
    assert layer['position_only'] is False  # a mixture with orthogonal; vanilla cross
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


def byte_tokens(texts, length):
  """Rows of ByteVocabulary ids (byte + 3) of `texts`, each followed by EOS (1), padded with 0."""
  rows = [[b + 3 for b in text.encode()] + [1] for text in texts]
  return jnp.array([row + [0] * (length - len(row)) for row in rows])


def draw_t5_layers(attention_type, tmp_path, monkeypatch, inputs=('hello', 'world')):
  """Captures a tiny T5 (`attention_type` self-attention, vanilla cross) on two examples
  (`inputs`; targets 'hey', 'abc') and draws every layer; returns ({stack: maps.json entry},
  {stack: Figure}, the captured maps)."""
  import seqio  # pylint: disable=g-import-not-at-top
  encoder = byte_tokens(inputs, max(len(text) for text in inputs) + 2)
  targets = byte_tokens(['hey', 'abc'], 5)                # 4 tokens each
  inputs = dict(encoder_input_tokens=encoder, decoder_target_tokens=targets,
                decoder_input_tokens=jnp.pad(targets[:, :-1], ((0, 0), (1, 0))))
  model = fixtures.tiny_model(attention_type)
  variables = nn.unbox(model.init(jax.random.key(0), **inputs, enable_dropout=False))
  captured = attention_maps.capture_probabilities(model, variables, **inputs,
                                                  enable_dropout=False)
  figures = {}
  monkeypatch.setattr(attention_maps, 'draw', lambda path, *args: figures.setdefault(
      os.path.basename(path).split('_layer')[0], DRAW(path, *args)))
  types = {'encoder_self': attention_type, 'decoder_self': attention_type, 'cross': 'vanilla'}
  batch = {k: np.asarray(v) for k, v in inputs.items()}
  entries = [attention_maps.draw_layer(entry, batch, seqio.ByteVocabulary(), types, 7,
                                       str(tmp_path)) for entry in captured]
  return {entry['stack']: entry for entry in entries}, figures, captured


def tick_texts(axis):
  return [label.get_text() for label in axis.get_ticklabels()]


def test_every_panel_labels_queries_and_keys_with_their_sides_tokens(tmp_path, monkeypatch):
  """Example 0's 61 encoder tokens are past the cap: every other one is labelled, with its
  position, on the encoder self-attention panel's both axes and the cross panel's keys."""
  _, figures, _ = draw_t5_layers('vanilla', tmp_path, monkeypatch, ('hello' * 12, 'world'))
  long = [f'{letter}@{i}' for i, letter in enumerate('hello' * 12) if i % 2 == 0] + ['</s>@60']
  encoder = [long, ['w', 'o', 'r', 'l', 'd', '</s>']]
  decoder = [['<s>', 'h', 'e', 'y'], ['<s>', 'a', 'b', 'c']]  # decoder inputs: shifted targets
  sides = {'encoder_self': (encoder, encoder), 'decoder_self': (decoder, decoder),
           'cross': (decoder, encoder)}
  names = {'encoder_self': ('encoder query', 'encoder key'),
           'decoder_self': ('decoder query', 'decoder key'),
           'cross': ('decoder query', 'encoder key')}
  assert set(figures) == set(sides)
  for stack, (queries, keys) in sides.items():
    panels = figures[stack].axes[:4]  # 2 examples x 2 heads, then the colour bar
    for index, ax in enumerate(panels):
      example = index // 2
      assert tick_texts(ax.yaxis) == queries[example], (stack, index)
      assert tick_texts(ax.xaxis) == keys[example], (stack, index)
    assert (panels[0].get_ylabel(), panels[2].get_xlabel()) == (
        f'example 0\n{names[stack][0]}', names[stack][1])


def test_long_axes_label_every_nth_position_with_token_and_position(tmp_path):
  labels = [f't{i}' for i in range(130)]
  positions, texts = attention_maps.thinned_ticks(labels, 130)
  assert len(positions) <= attention_maps.MAX_LABELLED_TOKENS and positions[0] == 0
  assert positions == list(range(0, 130, 3)) and texts[:2] == ['t0@0', 't3@3']
  assert attention_maps.thinned_ticks(labels, 48) == (list(range(48)), labels[:48])  # all shown
  # A drawn panel of 100 queries x 7 keys: thinned queries, every key.
  panel = np.ma.masked_array(np.full((100, 7), 1 / 7), np.zeros((100, 7), bool))
  figure = attention_maps.draw(str(tmp_path / 'long.png'), 'long', [[panel]], [labels],
                               [labels[:7]])
  queries = tick_texts(figure.axes[0].yaxis)
  assert 0 < len(queries) <= attention_maps.MAX_LABELLED_TOKENS and queries[0] == 't0@0'
  assert tick_texts(figure.axes[0].xaxis) == labels[:7]


def test_position_only_variants_are_those_whose_every_member_reads_a_position_table():
  for name in ('random', 'fixed_random', 'factorized_random', 'random+factorized_random'):
    assert attention_maps.position_only(name), name
  for name in ('vanilla', 'dense', 'factorized_dense', 'random+vanilla', 'dense+random'):
    assert not attention_maps.position_only(name), name


def test_a_random_synthesizers_maps_are_titled_and_flagged_position_only(tmp_path, monkeypatch):
  entries, figures, captured = draw_t5_layers('random', tmp_path, monkeypatch)
  assert {stack: entries[stack]['position_only'] for stack in entries} == {
      'encoder_self': True, 'decoder_self': True, 'cross': False}
  title = figures['encoder_self'].get_suptitle()
  assert title == ('encoder_self layer 0 (random, position-only: the same map for every '
                   'example), step 7')
  assert 'position-only' not in figures['cross'].get_suptitle()
  # What the flag promises: two examples of one length, different tokens, the same maps.
  for entry in captured[:2]:
    np.testing.assert_allclose(entry['probabilities'][0], entry['probabilities'][1], atol=1e-7)
  assert not np.allclose(captured[2]['probabilities'][0], captured[2]['probabilities'][1])

  entries, figures, _ = draw_t5_layers('vanilla', tmp_path, monkeypatch)
  assert not any(entry['position_only'] for entry in entries.values())
  assert figures['encoder_self'].get_suptitle() == 'encoder_self layer 0 (vanilla), step 7'


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
