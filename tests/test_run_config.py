"""MODEL_DIR remembers its run: eval/infer/resume read the saved config; another model is named."""
import json
import os
import re
import shutil

import gin
import optax
import pytest

from synth_jax import checkpoints
from synth_jax import cli
from synth_jax import gin_flags
from synth_jax import run_config
from synth_jax import train
from tests import fixtures


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def trained_dense_run(tmp_path_factory):
  """A dense run trained 2 steps through the CLI, once for the module; copy it before use."""
  model_dir = str(tmp_path_factory.mktemp('dense') / 'run')
  fixtures.register_copy_task()
  gin.clear_config()
  assert cli.main([
      'train', '--gin_file=models/t5_1_1_tiny.gin', '--gin_file=runs/train.gin',
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{fixtures.COPY_TASK}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", '--gin.TRAIN_STEPS=2',
      '--gin.BATCH_SIZE=8', '--gin.VOCAB_SIZE=384', '--gin.EVAL_PERIOD=0',
      "--gin.ATTENTION_TYPE='dense'", '--gin.synth_jax.network.T5Config.max_encoder_length=16',
      '--gin.synth_jax.network.T5Config.max_decoder_length=16',
      '--gin.synth_jax.train.train.eval_steps=1']) == 0
  gin.clear_config()
  return model_dir


@pytest.fixture
def dense_run(trained_dense_run, tmp_path):
  """This test's own copy of the trained dense run."""
  model_dir = str(tmp_path / 'run')
  shutil.copytree(trained_dense_run, model_dir)
  return model_dir


def test_eval_and_infer_need_only_the_model_dir_and_a_model_change_is_refused(dense_run, capsys):
  model_dir = dense_run
  capsys.readouterr()
  assert cli.main(['eval', f"--gin.MODEL_DIR='{model_dir}'"]) == 0
  out = capsys.readouterr().out
  assert f'Configuration: {model_dir}/config.gin' in out
  assert f'Loaded {model_dir}/checkpoints at step 2.' in out and 'Resumed' not in out
  assert 'eval  step 2' in out
  gin.clear_config()
  assert cli.main(['eval', f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.ATTENTION_TYPE='vanilla'"]) == 2
  message = capsys.readouterr().err.strip()
  assert len(message.splitlines()) == 1
  with pytest.raises(run_config.ModelMismatchError):  # the error behind the line
    cli.main(['--debug', 'eval', f"--gin.MODEL_DIR='{model_dir}'",
              "--gin.ATTENTION_TYPE='vanilla'"])
  assert message.startswith('synth-jax eval: cannot evaluate: MODEL_DIR=')
  assert "encoder_attention: 'dense' in the saved run, 'vanilla' now" in message
  assert 'cannot evaluate' in message


def test_a_restore_of_another_model_names_the_parameters_and_the_saved_attention(dense_run,
                                                                                   capsys):
  """Without model.json (runs of older versions), the restore itself tells the models apart."""
  model_dir = dense_run
  os.remove(os.path.join(model_dir, run_config.MODEL_FILE))
  assert cli.main(['eval', f"--gin.MODEL_DIR='{model_dir}'",
                   "--gin.ATTENTION_TYPE='vanilla'"]) == 2
  message = capsys.readouterr().err.strip()
  assert len(message.splitlines()) == 1
  with pytest.raises(checkpoints.CheckpointError):
    cli.main(['--debug', 'eval', f"--gin.MODEL_DIR='{model_dir}'",
              "--gin.ATTENTION_TYPE='vanilla'"])
  assert 'In call to configurable' not in message
  assert 'holds a different model' in message and 'corrupt' not in message
  assert 'only in the checkpoint: params/encoder/layers_0/attention/' in message
  assert "ATTENTION_TYPE = 'dense'" in message


def test_an_initial_checkpoint_of_another_attention_is_named_in_a_few_lines(tmp_path):
  common = dict(mixture_or_task_name=fixtures.register_copy_task(),
                task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=2,
                log_period=100, checkpoint_period=2, eval_period=0)
  train.train(model_dir=str(tmp_path / 'vanilla'), model=fixtures.tiny_model(), **common)
  with pytest.raises(checkpoints.CheckpointError) as error:
    train.train(model_dir=str(tmp_path / 'random'), model=fixtures.tiny_model('random'),
                initial_checkpoint_path=str(tmp_path / 'vanilla' / 'checkpoints' / '2'), **common)
  message = str(error.value)
  assert message.startswith(f'INITIAL_CHECKPOINT_PATH {tmp_path}/vanilla/checkpoints/2 holds a '
                            'different model')
  assert 'only in this model: params/decoder/layers_0/self_attention/random_logits' in message
  assert len(message.splitlines()) <= 10


def test_a_resume_reads_the_saved_config_and_flags_still_win(dense_run, capsys):
  model_dir = dense_run
  capsys.readouterr()
  assert cli.main(['train', f"--gin.MODEL_DIR='{model_dir}'", '--gin.TRAIN_STEPS=3',
                   '--gin.synth_jax.train.train.log_period=1']) == 0
  out = capsys.readouterr().out
  assert 'Resumed from' in out and 'step 3/3' in out
  assert "ATTENTION_TYPE = 'dense'" in open(os.path.join(model_dir, 'config.gin')).read()
  assert 'TRAIN_STEPS = 3' in open(os.path.join(model_dir, 'config.gin')).read()


def test_a_model_dir_without_a_saved_run_needs_a_gin_file(tmp_path, capsys):
  (tmp_path / 'checkpoints' / '3').mkdir(parents=True)  # a checkpoint, but no config.gin
  assert cli.main(['eval', f"--gin.MODEL_DIR='{tmp_path}'"]) == 2
  assert re.search('has no run to read.*--gin_file', capsys.readouterr().err)


def test_a_new_run_in_a_model_dir_without_checkpoints_ignores_an_old_config(tmp_path):
  """A leftover config.gin (its checkpoints deleted) must not override the new run's files."""
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  (model_dir / 'config.gin').write_text("ATTENTION_TYPE = 'dense'\n")
  assert gin_flags.parse_run_config(['configs/demo.gin'], [f"MODEL_DIR = '{model_dir}'"]) is None
  assert gin.query_parameter('%ATTENTION_TYPE') == 'vanilla'
  (model_dir / 'checkpoints' / '300').mkdir(parents=True)
  gin.clear_config()
  assert gin_flags.parse_run_config(['configs/demo.gin'], [f"MODEL_DIR = '{model_dir}'"]) == str(
      model_dir / 'config.gin')
  assert gin.query_parameter('%ATTENTION_TYPE') == 'dense'


def test_a_field_added_since_the_run_was_saved_is_the_same_model_at_its_default(tmp_path):
  model = fixtures.tiny_model('dense')
  run_config.write(str(tmp_path), '', model)
  path = tmp_path / run_config.MODEL_FILE
  saved = json.loads(path.read_text())
  del saved['self_attention_options']  # as written before that field existed
  path.write_text(json.dumps(saved))
  run_config.check_same_model(str(tmp_path), model)
  with pytest.raises(run_config.ModelMismatchError, match='self_attention_options'):
    run_config.check_same_model(
        str(tmp_path), fixtures.tiny_model('dense', self_attention_options={'rank': 2}))


def test_another_optimizer_state_is_named_not_called_corrupt(tmp_path):
  common = dict(model=fixtures.tiny_model(), mixture_or_task_name=fixtures.register_copy_task(),
                task_feature_lengths=fixtures.LENGTHS, batch_size=8, log_period=100,
                checkpoint_period=2, eval_period=0)
  train.train(model_dir=str(tmp_path), train_steps=2, **common)
  sgd = lambda plan, learning_rate: optax.sgd(learning_rate)  # no per-parameter state
  with pytest.raises(checkpoints.CheckpointError) as error:
    train.train(model_dir=str(tmp_path), train_steps=3, make_optimizer=sgd, **common)
  message = str(error.value)
  assert 'holds the same parameters but another optimizer state' in message
  assert 'corrupt' not in message
