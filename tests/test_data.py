"""seqio batches for the trainer: shapes, determinism, resumable position, one-example rows."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from synth_jax import data
from synth_jax import train_state
from tests import fixtures


def test_the_example_batch_and_the_first_stream_share_one_pipeline_build(monkeypatch):
  """Building the pipeline takes 0.2-1.5 CPU-s; a second stream gets a build of its own (a
  dataset iterated twice shuffles differently the second time)."""
  dataset = data.Dataset(fixtures.register_copy_task(), fixtures.LENGTHS, batch_size=4, seed=3)
  builds = []
  build = dataset._dataset  # pylint: disable=protected-access
  monkeypatch.setattr(dataset, '_dataset', lambda *a, **k: builds.append(a) or build(*a, **k))
  dataset.example_batch()
  next(dataset.train_batches())
  assert len(builds) == 1
  next(dataset.train_batches())
  assert len(builds) == 2


def test_batches_are_packed_feature_converted_and_resume_at_a_step():
  dataset = data.Dataset(fixtures.register_copy_task(), fixtures.LENGTHS, batch_size=4, seed=3)
  example = dataset.example_batch()
  assert set(example) == {'encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions',
                          'decoder_input_tokens', 'decoder_target_tokens', 'decoder_segment_ids',
                          'decoder_positions', 'decoder_loss_weights'}
  assert all(v.shape == (4, 16) for v in example.values())
  stream = dataset.train_batches()
  first = [next(stream) for _ in range(3)]
  resumed = next(dataset.train_batches(start_step=2))
  for key in first[2]:
    np.testing.assert_array_equal(resumed[key], first[2][key])
  assert not np.array_equal(first[0]['encoder_input_tokens'], first[1]['encoder_input_tokens'])


def test_unknown_task_is_a_clear_error():
  with pytest.raises(ValueError, match=r"unknown MIXTURE_OR_TASK_NAME 'no_such_task'"):
    data.Dataset('no_such_task', fixtures.LENGTHS, batch_size=4)


def converted_rows(lengths, pack):
  """Examples of more than half of each feature length, so a packed row holds one each."""
  rng = np.random.default_rng(5)
  examples = [{'inputs': rng.integers(2, 200, int(n_in)).astype(np.int32),
               'targets': rng.integers(2, 200, int(n_out)).astype(np.int32)}
              for n_in, n_out in zip(rng.integers(9, 17, 6), rng.integers(9, 17, 6))]
  dataset = tf.data.Dataset.from_generator(
      lambda: iter(examples), output_signature={
          k: tf.TensorSpec([None], tf.int32) for k in ('inputs', 'targets')})
  converted = seqio.EncDecFeatureConverter(pack=pack)(dataset, lengths)
  return next(converted.batch(6).as_numpy_iterator())


def test_packed_rows_of_one_example_each_become_the_unpacked_batch():
  lengths = {'inputs': 16, 'targets': 16}
  packed, unpacked = converted_rows(lengths, pack=True), converted_rows(lengths, pack=False)
  assert packed['encoder_segment_ids'].max() == 1  # one example a row, as constructed
  got = data.unpack_single_example_rows(packed)
  assert set(got) == set(unpacked)
  for key in unpacked:
    if key == 'decoder_input_tokens':  # unpacked shifts the last target into the padding
      valid = unpacked['decoder_target_tokens'] > 0
      np.testing.assert_array_equal(got[key][valid], unpacked[key][valid])
      assert not np.all(got[key] == unpacked[key])
    else:
      np.testing.assert_array_equal(got[key], unpacked[key])
  assert data.unpack_single_example_rows(unpacked).keys() == unpacked.keys()


def test_rows_of_several_examples_or_not_from_position_0_stay_packed():
  ids = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
  packed = dict(encoder_input_tokens=ids * 5, encoder_segment_ids=ids,
                encoder_positions=np.array([[0, 1, 2, 0], [0, 1, 0, 0]]),
                decoder_target_tokens=ids * 6, decoder_input_tokens=ids * 7,
                decoder_segment_ids=ids, decoder_positions=np.array([[0, 1, 2, 0], [0, 1, 0, 0]]),
                decoder_loss_weights=ids)
  assert 'encoder_segment_ids' not in data.unpack_single_example_rows(packed)
  variants = {
      'two examples in the decoder': dict(decoder_segment_ids=np.array([[1, 2, 2, 0],
                                                                        [1, 1, 0, 0]])),
      'an example after padding': dict(encoder_segment_ids=np.array([[0, 1, 1, 0], [1, 1, 0, 0]]),
                                       encoder_input_tokens=np.array([[0, 5, 5, 0],
                                                                      [5, 5, 0, 0]])),
      'positions not from 0': dict(encoder_positions=np.array([[1, 2, 3, 0], [0, 1, 0, 0]])),
      # Its decoder would see no encoder key: the packed and unpacked masks differ there.
      'targets without inputs': dict(encoder_input_tokens=np.array([[0, 0, 0, 0], [5, 5, 0, 0]]),
                                     encoder_segment_ids=np.array([[0, 0, 0, 0], [1, 1, 0, 0]]),
                                     encoder_positions=np.array([[0, 0, 0, 0], [0, 1, 0, 0]])),
  }
  for name, change in variants.items():
    got = data.unpack_single_example_rows({**packed, **change})
    assert set(got) == set(packed), name


def test_dataset_streams_single_example_rows_unpacked_and_notes_each_new_form(capsys):
  """The copy task's packed batches mix: batches 1-2 have rows of two examples, batch 3 has none."""
  raw = data.Dataset(fixtures.register_copy_task(), fixtures.LENGTHS, batch_size=8)
  unpacking = data.Dataset(fixtures.register_copy_task(), fixtures.LENGTHS, batch_size=8,
                           unpack_single_example_rows=True)
  stream, converted = raw.train_batches(), unpacking.train_batches()
  for _ in range(4):
    want = data.unpack_single_example_rows(next(stream))
    got = next(converted)
    assert got.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  printed = capsys.readouterr().out
  assert printed == ('step 3: the first unpacked batch of this run; compiling the step for it '
                     '(once).\n'), printed
  next(unpacking.train_batches(start_step=2))  # a stream resumed at step 3 starts unpacked
  assert 'the first' not in capsys.readouterr().out
  not_packed = data.Dataset(fixtures.register_copy_task(), fixtures.LENGTHS, batch_size=8,
                              pack=False, unpack_single_example_rows=True)
  assert not not_packed.unpack_single_example_rows  # nothing to unpack


@pytest.mark.parametrize('attention_type,execution', [
    ('vanilla', 'fast'), ('vanilla', 'xla'), ('random', 'fast'), ('factorized_dense', 'fast'),
    ('random+vanilla', 'fast')])
def test_unpacked_single_example_rows_give_the_packed_loss_and_gradients(attention_type,
                                                                         execution):
  """The network on the converted batch (padding masks, lengths) equals it on the packed one."""
  packed = converted_rows({'inputs': 16, 'targets': 16}, pack=True)
  unpacked = data.unpack_single_example_rows(packed)
  assert 'encoder_segment_ids' not in unpacked
  model = fixtures.tiny_model(attention_type, attention_execution=execution)
  inputs = {k: jnp.asarray(v) for k, v in train_state.model_inputs(packed).items()}
  variables = model.init(jax.random.key(0), **inputs, enable_dropout=False)
  weights = jnp.asarray(packed['decoder_loss_weights'])

  def loss(params, batch):
    logits = model.apply({**variables, 'params': params}, enable_dropout=False,
                         **{k: jnp.asarray(v) for k, v in train_state.model_inputs(batch).items()})
    return train_state.cross_entropy(logits, jnp.asarray(batch['decoder_target_tokens']),
                                     weights)[0]

  (want, want_grads), (got, got_grads) = (
      jax.jit(jax.value_and_grad(loss))(variables['params'], b) for b in (packed, unpacked))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def _register_tfds_task(name, data_dir):
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(
        name, source=seqio.TfdsDataSource('c4/en:3.1.0', tfds_data_dir=data_dir),
        preprocessors=[], output_features={'targets': seqio.Feature(seqio.ByteVocabulary())})
  return name


def test_an_unprepared_tfds_dataset_is_named_with_its_data_dir_and_the_prepare_step(tmp_path):
  name = _register_tfds_task('synth_jax_test_unprepared_c4', str(tmp_path))
  dataset = data.Dataset(name, {'inputs': 8, 'targets': 8}, batch_size=2)
  with pytest.raises(data.DataNotPreparedError,
                     match=rf'not prepared: c4/en:3.1.0 \(in {tmp_path}\).*README, "Prepare the '
                           r'TFDS datasets".*--tfds_data_dir'):
    dataset.example_batch()
  os.makedirs(tmp_path / 'c4' / 'en' / '3.1.0')
  (tmp_path / 'c4' / 'en' / '3.1.0' / 'dataset_info.json').write_text('{}')
  assert data.unprepared_tfds_datasets(name) == []


def test_decoded_examples_are_the_same_for_every_dataset_of_a_seed():
  """Span corruption draws noise: the examples decoded at the end of training, by `eval` and by
  `infer` come from fresh `Dataset`s and must agree."""
  lengths = {'inputs': 64, 'targets': 16}
  first, second = (list(data.Dataset('synth_jax_local_span_corruption', lengths, 2,
                                     seed=5).eval_examples('validation', 3)) for _ in range(2))
  other = list(data.Dataset('synth_jax_local_span_corruption', lengths, 2,
                            seed=6).eval_examples('validation', 3))
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['targets'], b['targets'])
  assert any(not np.array_equal(a['inputs'], c['inputs']) for a, c in zip(first, other))
