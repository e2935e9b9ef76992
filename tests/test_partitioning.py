"""Mesh creation and logical-axis rules."""
import jax
import pytest

from synth_jax import partitioning


def test_default_mesh_on_four_devices_is_2x2():
  mesh = partitioning.create_mesh()
  assert dict(mesh.shape) == {'data': 2, 'model': 2}
  assert mesh.axis_names == ('data', 'model')


def test_model_parallelism_must_divide_the_device_count():
  with pytest.raises(ValueError, match=r'model_parallelism=3 must divide the device count 4'):
    partitioning.create_mesh(3)
  assert dict(partitioning.create_mesh(4).shape) == {'data': 1, 'model': 4}
  assert dict(partitioning.create_mesh(devices=jax.devices()[:1]).shape) == {'data': 1, 'model': 1}


def test_the_gin_knob_the_mesh_error_names_exists_in_gin():
  import re  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from synth_jax import train  # pylint: disable=g-import-not-at-top,unused-import
  with pytest.raises(ValueError) as error:
    partitioning.create_mesh(3)
  knobs = re.findall(r'`([\w.]+\.model_parallelism)`', str(error.value))
  assert knobs == ['synth_jax.train.train.model_parallelism']
  gin.clear_config()
  try:
    for knob in knobs + ['train.model_parallelism']:
      gin.bind_parameter(knob, 2)  # raises for a name gin does not know
  finally:
    gin.clear_config()


def test_rules_follow_t5x_standard_and_cover_attention_axes():
  rules = dict(partitioning.logical_axis_rules())
  assert rules['batch'] == 'data'
  for axis in ('heads', 'joined_kv', 'mlp', 'vocab'):
    assert rules[axis] == 'model'
  for axis in ('embed', 'kv', 'length', 'relpos_buckets', 'synth_query_length',
               'synth_key_length', 'synth_rank', 'synth_hidden', 'mixture_members'):
    assert rules[axis] is None
