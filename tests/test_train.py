"""The trainer: sharding, learning, resume, checkpoint errors, NaN stops, SIGTERM, frozen params."""
import functools
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import checkpoints
from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax import train
from synth_jax import train_state
from tests import fixtures

TYPES = ('vanilla', 'dense', 'random', 'fixed_random', 'factorized_dense', 'factorized_random',
         'orthogonal', 'random+vanilla')
SIMILARITY_SPACES = ('cosine', 'neg_l2', 'hyperbolic', 'rotary', 'topk', 'frozen_gaussian',
                     'linear', 'cosine+random')


def run(model_dir, steps, attention_type='vanilla', **kwargs):
  options = dict(model_dir=model_dir, model=fixtures.tiny_model(attention_type),
                 mixture_or_task_name=fixtures.register_copy_task(),
                 task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=steps,
                 log_period=100, checkpoint_period=3, eval_period=0,
                 learning_rate=optimizer_lib.rsqrt_schedule(1.0, 100))
  options.update(kwargs)
  losses = []
  result = train.train(on_step=lambda step, m: losses.append((step, m['loss'])), **options)
  return result, losses


def synthetic_batch(batch=8, length=16, seed=0):
  """A learnable copy batch (targets = inputs, 3 padded positions), unlike bench's random one."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, 200, size=(batch, length)).astype(np.int32)
  tokens[:, -3:] = 0
  shifted = np.concatenate([np.zeros((batch, 1), np.int32), tokens[:, :-1]], axis=1)
  return {'encoder_input_tokens': tokens, 'decoder_target_tokens': tokens,
          'decoder_input_tokens': shifted, 'decoder_loss_weights': (tokens > 0).astype(np.int32)}


def make_optimizer(plan):
  return optimizer_lib.adafactor(optimizer_lib.rsqrt_schedule(1.0, 10), plan)


def one_step(model, mesh, batch):
  state, shardings, optimizer = train_state.create(model, make_optimizer, batch, mesh,
                                                   jax.random.key(0))
  step = jax.jit(functools.partial(train_state.train_step, model, optimizer),
                 in_shardings=(shardings, None, None), out_shardings=(shardings, None))
  return state, *step(state, batch, jax.random.key(1))


def test_sharded_step_on_2x2_mesh_equals_one_device():
  model = fixtures.tiny_model('random+vanilla', num_heads=4, head_dim=8)
  batch = synthetic_batch()
  _, sharded_state, sharded_metrics = one_step(model, partitioning.create_mesh(2), batch)
  _, single_state, single_metrics = one_step(
      model, partitioning.create_mesh(1, devices=jax.devices()[:1]), batch)
  np.testing.assert_allclose(sharded_metrics['loss'], single_metrics['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5),
               jax.device_get(sharded_state.params), jax.device_get(single_state.params))
  kernel = sharded_state.params['encoder']['layers_0']['attention']['value']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')


@pytest.mark.parametrize('attention_type', TYPES + SIMILARITY_SPACES)
def test_loss_decreases_for_every_attention_type(attention_type):
  model = fixtures.tiny_model(attention_type)
  batch = synthetic_batch()
  mesh = partitioning.create_mesh(1, devices=jax.devices()[:1])
  state, shardings, optimizer = train_state.create(model, make_optimizer, batch, mesh,
                                                   jax.random.key(0))
  step = jax.jit(functools.partial(train_state.train_step, model, optimizer))
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch, jax.random.key(1))
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize('attention_type', ['fixed_random', 'orthogonal'])
def test_train_step_leaves_frozen_variables_bit_identical_without_optimizer_state(attention_type):
  model = fixtures.tiny_model(attention_type)
  mesh = partitioning.create_mesh(2)
  state, new_state, _ = one_step(model, mesh, synthetic_batch())
  frozen_before = jax.device_get(state.frozen)
  assert jax.tree.leaves(frozen_before), 'this variant should have frozen variables'
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(new_state.frozen), frozen_before)
  frozen_paths = {jax.tree_util.keystr(p) for p, _ in
                  jax.tree_util.tree_flatten_with_path(state.frozen)[0]}
  opt_paths = {jax.tree_util.keystr(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(state.opt_state)[0]}
  assert not any(f in o for f in frozen_paths for o in opt_paths)
  param_paths = {jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_flatten_with_path(state.params)[0]}
  assert not frozen_paths & param_paths


@pytest.fixture(scope='module')
def six_steps(tmp_path_factory):
  """`(model_dir, losses)` of a vanilla run of 6 steps (checkpoints at steps 3 and 6), trained
  once for the module; tests change only their own copy (`six_step_run`)."""
  model_dir = tmp_path_factory.mktemp('six_steps') / 'run'
  _, losses = run(str(model_dir), 6)
  return model_dir, losses


@pytest.fixture
def six_step_run(six_steps, tmp_path):
  """This test's own copy of the 6-step run, at `tmp_path / 'a'`."""
  return shutil.copytree(six_steps[0], tmp_path / 'a')


def test_killed_run_resumes_with_the_same_loss_sequence(six_steps, six_step_run):
  killed = six_step_run
  assert sorted(os.listdir(killed / 'checkpoints')) == ['3', '6']
  # Simulate a kill between checkpoints: drop the final save so resume starts at step 3.
  shutil.rmtree(killed / 'checkpoints' / '6')
  _, resumed = run(str(killed), 6)
  assert [s for s, _ in resumed] == [4, 5, 6]
  assert resumed == six_steps[1][3:]


def truncate_the_array_files(step_dir) -> dict[str, int]:
  """Cuts every array data file orbax wrote for `step_dir` (OCDBT `d/` files: which holds which
  array varies) to its first 8 bytes, so that no array is left whole (cut to half, a file's first
  arrays were still readable: the parameters alone, which eval reads, sometimes were); returns
  their new sizes by path under `step_dir`."""
  sizes = {}
  for root, _, names in os.walk(step_dir / 'default' / 'ocdbt.process_0' / 'd'):
    for name in names:
      path = os.path.join(root, name)
      os.truncate(path, min(8, os.path.getsize(path) // 2))
      sizes[os.path.relpath(path, step_dir)] = os.path.getsize(path)
  assert sizes
  return sizes


# orbax leaves the reads of the other arrays of a failed restore unretrieved; pytest reports them.
QUIET_FAILED_READS = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@QUIET_FAILED_READS
def test_an_unreadable_latest_step_is_set_aside_and_train_and_eval_use_the_step_before(
    six_step_run, tmp_path, capsys, caplog):
  trained = six_step_run  # steps 3 and 6
  truncated = truncate_the_array_files(trained / 'checkpoints' / '6')
  shutil.copytree(trained, tmp_path / 'b')
  capsys.readouterr()

  with pytest.raises(checkpoints.CheckpointError,
                     match=r'could not restore checkpoint step 6 .*OUT_OF_RANGE.*move .*6 aside'):
    run(str(trained), 7, strict_restore=True)
  assert sorted(os.listdir(trained / 'checkpoints')) == ['3', '6']  # strict: nothing moved

  with caplog.at_level('WARNING'):
    result, losses = run(str(trained), 4)
  printed = capsys.readouterr().out
  line = f'checkpoint step 6 in {trained / "checkpoints"} cannot be read (OUT_OF_RANGE: '
  assert line in printed and 'TensorStore' not in printed, printed
  notice = printed[printed.index(line):].splitlines()[0]
  assert notice.endswith(f': moved to {trained / "checkpoints.corrupt" / "6"}; resuming from '
                         'step 3'), notice
  assert [s for s, _ in losses] == [4] and result['step'] == 4
  assert {path: os.path.getsize(trained / 'checkpoints.corrupt' / '6' / path)
          for path in truncated} == truncated  # kept as it was
  assert sorted(os.listdir(trained / 'checkpoints')) == ['3', '4']

  with pytest.raises(checkpoints.CheckpointError, match='could not restore checkpoint step 6'):
    evaluate(str(tmp_path / 'b'), strict_restore=True)
  with caplog.at_level('WARNING'):
    evaluated = evaluate(str(tmp_path / 'b'), eval_steps=1)
  assert evaluated['step'] == 3
  assert f': moved to {tmp_path / "b" / "checkpoints.corrupt" / "6"}; reading step 3\n' in (
      capsys.readouterr().out)
  assert os.listdir(tmp_path / 'b' / 'checkpoints.corrupt') == ['6']
  assert 'Metadata file does not exist' not in caplog.text, caplog.text


@QUIET_FAILED_READS
def test_when_no_readable_step_is_left_training_starts_afresh_and_eval_says_so(
    six_step_run, tmp_path, capsys):
  trained = six_step_run
  for root, _, files in os.walk(trained / 'checkpoints'):
    for name in files:
      if name.endswith('.json') or 'manifest' in name or name == '_METADATA':
        continue
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  shutil.copytree(trained, tmp_path / 'b')
  capsys.readouterr()
  _, losses = run(str(trained), 4)
  assert '; no earlier step is left: training starts afresh\n' in capsys.readouterr().out
  assert [s for s, _ in losses] == [1, 2, 3, 4]
  assert sorted(os.listdir(trained / 'checkpoints.corrupt')) == ['3', '6']
  with pytest.raises(checkpoints.CheckpointError, match='eval needs a checkpoint'):
    evaluate(str(tmp_path / 'b'))
  assert '; no earlier step is left\n' in capsys.readouterr().out
  assert sorted(os.listdir(tmp_path / 'b' / 'checkpoints.corrupt')) == ['3', '6']


def test_missing_initial_checkpoint_gives_a_clear_error_before_anything_is_written(tmp_path):
  with pytest.raises(checkpoints.CheckpointError,
                     match='INITIAL_CHECKPOINT_PATH .* does not exist'):
    run(str(tmp_path / 'new'), 1, initial_checkpoint_path=str(tmp_path / 'nope'))
  assert not os.path.exists(tmp_path / 'new')


def evaluate(model_dir, attention_type='vanilla', **kwargs):
  return train.evaluate(model_dir=model_dir, model=fixtures.tiny_model(attention_type),
                        mixture_or_task_name=fixtures.register_copy_task(),
                        task_feature_lengths=fixtures.LENGTHS, batch_size=8, **kwargs)


def test_eval_without_checkpoint_is_a_clear_error_before_anything_is_written(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match='eval needs a checkpoint'):
    evaluate(str(tmp_path))
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  def exploding(step):
    return jnp.where(step >= 3, jnp.nan, 0.01)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 5.*last good checkpoint \(step 3\)'):
    run(str(tmp_path), 8, learning_rate=exploding)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']


def test_steps_run_ahead_of_the_host_and_a_nan_is_still_caught_before_a_checkpoint(
    tmp_path, monkeypatch):
  """Without `on_step`, metrics are read only to log/evaluate/save, yet every loss is checked."""
  reads = []
  device_get = jax.device_get
  monkeypatch.setattr(train.jax, 'device_get', lambda x: reads.append(list(x)) or device_get(x))
  def exploding(step):
    return jnp.where(step >= 3, jnp.nan, 0.01)
  with pytest.raises(train.NonFiniteLossError, match=r'at step 5.*last good checkpoint \(step 3\)'):
    train.train(model_dir=str(tmp_path), model=fixtures.tiny_model(),
                mixture_or_task_name=fixtures.register_copy_task(),
                task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=8,
                log_period=100, checkpoint_period=3, eval_period=0, learning_rate=exploding)
  # Step 1 alone (its time, compilation included, is reported apart), then one read of steps
  # 2-3 before saving step 3 and one of steps 4-6 before saving step 6.
  assert [[step for step, _ in pending] for pending in reads] == [[1], [2, 3], [4, 5, 6]]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3']


@jax.jit
def slower(outputs):
  """A train step's `(state, metrics)` with metrics that take ~0.2 s more (a device slower than
  the host, as on a TPU, where the host would otherwise queue steps far ahead)."""
  state, metrics = outputs
  x = jnp.full((512, 512), metrics['loss'] * 1e-6)
  for _ in range(60):
    x = x @ x
  return state, {**metrics, 'loss': metrics['loss'] + 0 * x[0, 0]}


def test_sigterm_saves_the_step_under_way_without_evaluating_or_decoding(
    tmp_path, monkeypatch, capsys):
  """Without `on_step` steps are dispatched ahead; the host still waits for all but the newest,
  so the save a SIGTERM asks for is at most a step away."""
  dispatched, not_done = [], []
  jit_train_step = train._jit_train_step  # pylint: disable=protected-access

  def counting(*args, **kwargs):
    step_fn = jit_train_step(*args, **kwargs)

    def step(state, batch, rng):
      not_done.append(sum(not m['loss'].is_ready() for m in dispatched[:-1]))
      if len(dispatched) == 5:
        os.kill(os.getpid(), signal.SIGTERM)  # while step 6 is dispatched
      state, metrics = slower(step_fn(state, batch, rng))
      dispatched.append(metrics)
      return state, metrics
    return step
  monkeypatch.setattr(train, '_jit_train_step', counting)
  result = train.train(
      model_dir=str(tmp_path), model=fixtures.tiny_model(),
      mixture_or_task_name=fixtures.register_copy_task(), task_feature_lengths=fixtures.LENGTHS,
      batch_size=8, train_steps=50, checkpoint_period=100, log_period=100, eval_period=3,
      eval_steps=1, infer_examples=2)
  assert result['step'] == 6 and 'examples' not in result
  assert os.listdir(tmp_path / 'checkpoints') == ['6']
  printed = capsys.readouterr().out
  assert 'eval  step 3' in printed, printed  # evaluation was on
  assert 'eval  step 6' not in printed and 'prediction' not in printed, printed
  assert not_done == [0] * 6  # each step began after all but the one before it were done


def test_training_writes_events_config_and_evaluates(tmp_path):
  result, losses = run(str(tmp_path), 3, eval_period=3, eval_steps=2, log_period=1)
  assert set(result['eval']) == {'loss', 'accuracy'}
  assert np.isfinite(result['eval']['loss'])
  assert os.listdir(tmp_path / 'train') and os.listdir(tmp_path / 'eval')
  assert os.path.isfile(tmp_path / 'config.gin')
  evaluated = evaluate(str(tmp_path), eval_steps=2)
  assert evaluated['step'] == 3
  np.testing.assert_allclose(evaluated['eval']['loss'], result['eval']['loss'], rtol=1e-5)


def test_batches_of_single_example_rows_train_unpacked_with_the_same_losses(capsys):
  """The copy task's packed batches mix: steps 1-2 have rows of two examples, step 3 has none."""
  _, converted = run(None, 6, 'random')
  printed = capsys.readouterr().out
  assert 'step 3: the first unpacked batch of this run' in printed, printed
  _, kept = run(None, 6, 'random', unpack_single_example_rows=False)
  assert 'the first' not in capsys.readouterr().out
  assert [s for s, _ in converted] == [s for s, _ in kept] == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([l for _, l in converted], [l for _, l in kept], rtol=1e-4)


def test_indivisible_sharded_dimension_names_the_parameter_and_the_fix():
  model = fixtures.tiny_model(vocab_size=259)  # 259 does not split over model=2
  with pytest.raises(ValueError, match=r"\['kernel'\] has 259 along logical axis 'vocab'.*128"):
    train_state.create(model, make_optimizer, synthetic_batch(), partitioning.create_mesh(2),
                       jax.random.key(0))


def test_a_finished_run_says_so_and_trains_nothing(six_step_run, tmp_path, capsys):
  model_dir = str(six_step_run)
  capsys.readouterr()
  # A resume reads its own checkpoint: the INITIAL_CHECKPOINT_PATH it started from may be gone.
  result, losses = run(model_dir, 6, initial_checkpoint_path=str(tmp_path / 'gone'))
  assert losses == [] and result['step'] == 6
  assert 'is already at step 6 of TRAIN_STEPS=6: nothing to train. Raise TRAIN_STEPS' in (
      capsys.readouterr().out)


@pytest.mark.parametrize('where', ['file', 'under_a_file'])
def test_a_model_dir_that_cannot_hold_a_run_is_a_one_line_error(tmp_path, where):
  blocker = tmp_path / 'taken'
  blocker.write_text('not a directory')
  model_dir = blocker if where == 'file' else blocker / 'run'
  with pytest.raises(ValueError) as error:
    run(str(model_dir), 1)
  first_line = str(error.value).splitlines()[0]  # gin may add its own 'In call to' line
  assert first_line.startswith(f'MODEL_DIR={str(model_dir)!r} ')
  assert 'point MODEL_DIR at a directory you can write' in first_line
  assert not (tmp_path / 'taken' / 'run').exists()


def test_the_cli_prints_an_unusable_model_dir_as_one_line_without_a_traceback(tmp_path, capsys):
  from synth_jax import cli  # pylint: disable=g-import-not-at-top
  blocker = tmp_path / 'taken'
  blocker.write_text('not a directory')
  assert cli.main(['train', '--gin_file=configs/demo.gin', f"--gin.MODEL_DIR='{blocker}'"]) == 2
  assert capsys.readouterr().err.strip() == (
      f'synth-jax train: MODEL_DIR={str(blocker)!r} is a file: point MODEL_DIR at a directory you '
      'can write, e.g. --gin.MODEL_DIR="\'/tmp/my_run\'".')


def test_an_eval_without_task_metrics_logs_no_skipping_eval_and_no_uncached_warning(
    tmp_path, caplog, capsys):
  with caplog.at_level('WARNING'):
    run(str(tmp_path), 2, eval_period=2, eval_steps=1)
  logged = caplog.text
  assert 'Skipping eval' not in logged and 'uncached' not in logged, logged
  assert 'eval  step 2' in capsys.readouterr().out
