"""One row measured in this process: its config, and the FLOPs it records."""
import dataclasses

import gin
import jax.numpy as jnp
import numpy as np
import pytest

from synth_jax import network
from synth_jax.benchmark import runner
from tests.benchmark.flop_formulas import closed_form


def test_model_config_takes_the_logits_matmul_dtype():
  cfg = runner.model_config('tiny', 'vanilla', 32, 16, logits_matmul_dtype='bfloat16')
  assert cfg.logits_matmul_dtype == jnp.bfloat16
  assert runner.model_config('tiny', 'vanilla', 32, 16).logits_matmul_dtype == jnp.float32
  assert (cfg.encoder_attention, cfg.decoder_attention, cfg.cross_attention) == (
      'vanilla', 'vanilla', 'vanilla')
  assert (cfg.max_encoder_length, cfg.max_decoder_length) == (32, 16)


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize('preset', ['base', 'tiny'])
def test_a_preset_model_is_the_t5config_its_gin_file_builds(preset, clean_gin):
  """Field by field, at the file's lengths: the benchmark holds no model size of its own."""
  macros = [f'{name} = {value!r}' for name, value in runner.PRESETS[preset]['macros'].items()]
  gin.parse_config_files_and_bindings(
      [str(runner.MODEL_GIN_DIR / runner.PRESETS[preset]['gin_file'])],
      ["ATTENTION_TYPE = 'random'", *macros])
  built = gin.get_configurable('synth_jax.network.T5Config')()
  bench = runner.model_config(preset, 'random', built.max_encoder_length,
                              built.max_decoder_length)
  for field in dataclasses.fields(network.T5Config):
    assert getattr(bench, field.name) == getattr(built, field.name), field.name
  assert (bench.encoder_attention, bench.decoder_attention) == ('random', 'random')


def test_reading_a_preset_leaves_the_gin_configuration_alone(clean_gin):
  gin.parse_config(["VOCAB_SIZE = 7", "ATTENTION_TYPE = 'dense'"])
  before = gin.config_str()
  assert runner.model_config('tiny', 'random', 32, 16).vocab_size == 512
  assert gin.config_str() == before
  assert (gin.query_parameter('%VOCAB_SIZE'), gin.query_parameter('%ATTENTION_TYPE')) == (
      7, 'dense')


def test_a_reference_row_executes_exactly_the_model_flops():
  row = runner.measure('random', 'tiny', steps=1, warmup=0, attention_execution='reference',
                       peak_tflops=1.0)
  assert row['error'] is None and row['attention_execution'] == 'reference'
  assert row['model_flops_per_step'] == closed_form('random', 'tiny')
  assert row['traced_matmul_flops'] == row['model_flops_per_step']
  assert row['overhead_flops_per_step'] == 0
  assert sum(row['model_flops_by_part'].values()) == row['model_flops_per_step']
  assert np.isfinite(row['loss'])


def test_a_row_on_a_model_parallel_mesh_gives_the_loss_of_one_device():
  rows = [runner.measure('vanilla', 'tiny', batch_size=4, steps=1, warmup=0, peak_tflops=1.0,
                         model_parallelism=m) for m in (1, 2)]
  assert [r['error'] for r in rows] == [None, None]
  assert rows[1]['model_parallelism'] == 2
  np.testing.assert_allclose(rows[1]['loss'], rows[0]['loss'], rtol=1e-4)
