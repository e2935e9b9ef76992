"""The `synth-jax` command line: gin flags, attention swap, a tiny run end to end."""
import dataclasses
import functools
import json
import os

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import pytest

from synth_jax import cli
from synth_jax import gin_flags
from synth_jax.diagnostics import presets
from tests import fixtures


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def build_model_from_gin():
  model = gin.get_configurable('synth_jax.network.Transformer')()  # config bound by gin
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), tokens, tokens, tokens)))
  return shapes['params']


def test_one_gin_override_swaps_self_attention_in_both_stacks():
  gin_flags.parse(['configs/demo.gin'], [])
  vanilla = build_model_from_gin()
  assert 'query' in vanilla['encoder']['layers_0']['attention']
  gin.clear_config()
  gin_flags.parse(['configs/demo.gin'], gin_flags.split(["--gin.ATTENTION_TYPE='random'"])[0])
  random = build_model_from_gin()
  for stack, name in (('encoder', 'attention'), ('decoder', 'self_attention')):
    attention = random[stack]['layers_0'][name]
    assert set(attention) == {'random_logits', 'value', 'out'}
    assert attention['random_logits'].shape[1:] == ((128, 128) if stack == 'encoder' else (32, 32))
  # Cross-attention stays vanilla.
  assert 'query' in random['decoder']['layers_0']['encoder_decoder_attention']


def test_unknown_attention_type_from_the_command_line_lists_valid_types():
  gin_flags.parse(['configs/demo.gin'], ["ATTENTION_TYPE = 'synth'"])
  with pytest.raises(ValueError, match=r"unknown attention type 'synth'.*Valid types: .*dense"):
    build_model_from_gin()


def test_gin_flag_without_value_is_a_clear_error(capsys):
  assert cli.main(['train', '--gin.ATTENTION_TYPE']) == 2
  assert '--gin.NAME=VALUE' in capsys.readouterr().err


def test_missing_gin_file_is_a_clear_error(capsys):
  assert cli.main(['train', '--gin_file=configs/nope.gin']) == 2
  assert '--gin_file=configs/nope.gin: not found' in capsys.readouterr().err


@pytest.mark.slow
def test_train_command_runs_a_tiny_model_end_to_end(tmp_path, capsys):
  fixtures.register_copy_task()
  model_dir = str(tmp_path / 'run')
  status = cli.main([
      'train', '--gin_file=models/t5_1_1_tiny.gin', '--gin_file=runs/train.gin',
      f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{fixtures.COPY_TASK}'",
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 16}", '--gin.TRAIN_STEPS=2',
      '--gin.BATCH_SIZE=8', '--gin.VOCAB_SIZE=384', '--gin.EVAL_PERIOD=2',
      "--gin.ATTENTION_TYPE='dense'", '--gin.synth_jax.network.T5Config.max_encoder_length=16',
      '--gin.synth_jax.network.T5Config.max_decoder_length=16',
      '--gin.synth_jax.train.train.eval_steps=1', '--gin.synth_jax.train.train.log_period=1'])
  assert status == 0
  out = capsys.readouterr().out
  assert 'step 2/2' in out and 'eval  step 2' in out
  assert 'step 1: compiled the train step' in out and 'saved step 2 (' in out
  assert os.listdir(os.path.join(model_dir, 'checkpoints')) == ['2']
  assert "ATTENTION_TYPE = 'dense'" in open(os.path.join(model_dir, 'config.gin')).read()


def test_params_command_prints_the_table(capsys):
  assert cli.main(['params', 'vanilla']) == 0
  assert 'vanilla' in capsys.readouterr().out


@pytest.mark.slow
def test_the_demo_trains_a_few_steps_with_a_mixture_of_similarity_spaces(tmp_path, capsys):
  """`configs/demo.gin` (pydoc corpus, byte vocabulary, cut to 1+1 layers) with one
  ATTENTION_TYPE override; each similarity space alone learns in tests/test_train.py."""
  status = cli.main([
      'train', '--gin_file=configs/demo.gin', f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
      "--gin.ATTENTION_TYPE='cosine+random'", '--gin.TRAIN_STEPS=2', '--gin.BATCH_SIZE=4',
      "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 8}", '--gin.EVAL_PERIOD=0',
      '--gin.synth_jax.train.train.infer_examples=0', '--gin.synth_jax.train.train.log_period=1',
      *fixtures.ONE_LAYER_FLAGS])
  assert status == 0
  out = capsys.readouterr().out
  assert 'step 2/2' in out and 'loss nan' not in out


@pytest.mark.slow
def test_diagnose_writes_results_report_and_plots_with_cannot_run_for_a_synthesizer(
    tmp_path, monkeypatch, capsys):
  """The tiny preset cut to 50 steps; MQAR is also the tiny extrapolation task (one run)."""
  tiny = presets.PRESETS['tiny']
  monkeypatch.setitem(presets.PRESETS, 'tiny', dataclasses.replace(
      tiny, train=dataclasses.replace(tiny.train, steps=50, eval_examples=32)))
  out = tmp_path / 'diag'
  status = cli.main(['diagnose', '--preset', 'tiny', '--tasks', 'mqar,extrapolation',
                     '--attention', 'fixed_random', '--out', str(out), '--seed', '3'])
  assert status == 0
  assert '[1/1] mqar/fixed_random step 50/50' in capsys.readouterr().out
  results = json.load(open(out / 'results.json'))
  assert results['meta']['seed'] == 3 and list(results['runs']) == ['mqar/fixed_random']
  record = results['runs']['mqar/fixed_random']
  assert [row['status'] for row in record['extrapolation']] == ['ran', 'cannot run', 'cannot run']
  assert len(record['grad_norm']) == 50 and record['statistics']['attention']
  text = open(out / 'report.md').read()
  assert f"| fixed_random | {record['final_accuracy']:.3f} |" in text
  assert '| fixed_random | ' + f"{record['extrapolation'][0]['accuracy']:.3f} | cannot run" in text
  assert sorted(p.name for p in out.glob('*.png')) == [
      'curves_mqar.png', 'extrapolation.png', 'final_accuracy.png', 'grad_norms_mqar.png']
  # A second call on the same --out keeps finished runs with --skip_done and logs both commands.
  assert cli.main(['diagnose', '--preset', 'tiny', '--tasks', 'mqar', '--attention',
                   'fixed_random', '--out', str(out), '--seed', '3', '--skip_done']) == 0
  assert '[1/1] mqar/fixed_random: already in' in capsys.readouterr().out
  assert len(json.load(open(out / 'results.json'))['commands']) == 2
  # --no-draw leaves the report to a later --report_only.
  (out / 'report.md').unlink()
  assert cli.main(['diagnose', '--preset', 'tiny', '--tasks', 'mqar', '--attention',
                   'fixed_random', '--out', str(out), '--seed', '3', '--skip_done',
                   '--no-draw']) == 0
  assert not (out / 'report.md').exists()


def test_diagnose_plan_lists_parts_and_bad_requests_are_clear_errors(capsys):
  assert cli.main(['diagnose', '--preset', 'full', '--tasks', 'mqar', '--attention',
                   'vanilla,random', '--out', '/nonexistent', '--plan']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('part 1/2: mqar/vanilla, mqar/random, mqar/kv=4/vanilla')
  with pytest.raises(SystemExit, match='unknown task'):
    cli.main(['diagnose', '--tasks', 'copy', '--attention', 'vanilla', '--out', '/tmp/x'])
  assert cli.main(['diagnose', '--tasks', 'mqar', '--attention', 'synth', '--out', '/tmp/x']) == 2
  assert 'unknown attention type' in capsys.readouterr().err
  with pytest.raises(SystemExit, match='parts 1..2'):
    cli.main(['diagnose', '--preset', 'full', '--tasks', 'mqar', '--attention',
              'vanilla,random', '--out', '/tmp/x', '--part', '3'])


def test_attention_maps_is_dispatched_to_its_own_flags(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(['attention-maps', '--help'])
  assert exit_info.value.code == 0
  assert 'synth-jax attention-maps' in capsys.readouterr().out


def test_help_lists_the_gin_flags_with_an_example(capsys):
  with pytest.raises(SystemExit) as exit_status:
    cli.main(['train', '--help'])
  assert exit_status.value.code == 0
  out = capsys.readouterr().out
  for text in ('--gin_file', '--gin.NAME=VALUE', '--gin.ATTENTION_TYPE="\'random\'"',
               'a gin file (repeatable)'):
    assert text in out


@pytest.mark.parametrize('command', [['train'], ['eval'], ['infer'], ['attention-maps']])
def test_each_commands_help_lists_the_gin_flags(command, capsys):
  with pytest.raises(SystemExit) as exit_status:
    cli.main([*command, '--help'])
  assert exit_status.value.code == 0
  out = capsys.readouterr().out
  assert '--gin.NAME=VALUE' in out and '--gin_file' in out


def test_eval_and_infer_take_the_runs_gin_bindings_and_never_call_training(monkeypatch):
  """`synth-jax eval|infer` run `train.evaluate|infer` with what gin binds to train's arguments
  of the same names (each function's own arguments only); training is not called."""
  from synth_jax import train  # pylint: disable=g-import-not-at-top
  calls = {}
  monkeypatch.setattr(train, 'train', lambda **kw: pytest.fail('infer/eval called training'))
  for name in ('evaluate', 'infer'):  # recorders with the real signatures (__wrapped__)
    recorder = functools.partial(lambda name, **kw: calls.setdefault(name, kw), name)
    monkeypatch.setattr(train, name, functools.wraps(getattr(train, name))(recorder))
  gin_flags.parse(['configs/demo.gin'], ["MODEL_DIR = '/tmp/somewhere'", 'BATCH_SIZE = 4',
                                         'synth_jax.train.train.eval_steps = 3'])
  cli.run_command('eval', examples=5)
  cli.run_command('infer', examples=5)
  evaluated, inferred = calls['evaluate'], calls['infer']
  assert evaluated['model_dir'] == inferred['model_dir'] == '/tmp/somewhere'
  assert evaluated['batch_size'] == inferred['batch_size'] == 4
  assert evaluated['eval_steps'] == 3 and 'eval_steps' not in inferred
  assert inferred['examples'] == 5 and 'train_steps' not in evaluated
  assert evaluated['model'].config.encoder_attention == 'vanilla'
