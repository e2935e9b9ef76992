"""Device mesh and logical-axis rules: how every named axis is sharded and factored.

Mesh axes are `('data', 'model')` (a v3-8 is 2x2). The rules follow T5X's standard 1-D model
parallelism: batch -> data; heads, joined_kv, mlp, vocab -> model; embed, kv, length replicated.
Attention variants declare rules for the axes they introduce (`synth_jax.attention.axis_rules`).
"""
from typing import Optional

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from synth_jax import attention
from synth_jax.attention.core import AxisRule

MESH_AXES = ('data', 'model')

# Axes of the T5 layers (parameters) and of activations.
STANDARD_AXIS_RULES = {
    'vocab': AxisRule('model', 'column'),
    'mlp': AxisRule('model', 'column'),
    'relpos_buckets': AxisRule(None, 'none'),
    'batch': AxisRule('data', 'none'),
    'length': AxisRule(None, 'none'),
}


def axis_rules() -> dict[str, AxisRule]:
  """Every logical axis the package uses -> its mesh axis and Adafactor factor role."""
  return {**STANDARD_AXIS_RULES, **attention.axis_rules()}


def logical_axis_rules() -> tuple[tuple[str, Optional[str]], ...]:
  """`(logical axis, mesh axis)` pairs in Flax's rule format."""
  return tuple((name, rule.mesh_axis) for name, rule in axis_rules().items())


def create_mesh(model_parallelism: Optional[int] = None, devices=None) -> Mesh:
  """A `('data', 'model')` mesh over `devices` (default: all).

  model_parallelism: size of the 'model' axis; None picks 2 when the device count is a multiple
  of 4 (a v3-8's 2x2), else 1.
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  count = devices.size
  if model_parallelism is None:
    model_parallelism = 2 if count % 4 == 0 else 1
  if model_parallelism < 1 or count % model_parallelism:
    raise ValueError(f'model_parallelism={model_parallelism} must divide the device count '
                     f'{count}; set gin `synth_jax.train.train.model_parallelism` (or '
                     f'`--gin.train.model_parallelism=N`) to a divisor.')
  return Mesh(devices.reshape(count // model_parallelism, model_parallelism), MESH_AXES)


def logical_shardings(tree, mesh: Mesh):
  """NamedShardings for a (possibly abstract) tree of boxed `nn.Partitioned` values."""
  specs = nn.get_partition_spec(tree)
  return nn.logical_to_mesh_sharding(specs, mesh, logical_axis_rules())


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Batch-major arrays: the leading axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, PartitionSpec('data'))


def process_rows(mesh: Mesh, batch_size: int) -> slice:
  """The rows of every `[batch_size, ...]` global batch that this process's devices hold
  (`data_sharding`), a slice of consecutive rows: all of them on one process; with several, each
  process's share of the 'data' axis (all of them again where a process spans that axis)."""
  if batch_size % mesh.shape['data']:
    raise ValueError(f'BATCH_SIZE={batch_size} must be divisible by the data-parallel size '
                     f'{mesh.shape["data"]} (the mesh is {dict(mesh.shape)}).')
  held = data_sharding(mesh).addressable_devices_indices_map((batch_size,)).values()
  starts = sorted({index[0].indices(batch_size)[:2] for index in held})
  if any(stop != start for (_, stop), (start, _) in zip(starts, starts[1:])):
    raise ValueError(f'the devices of process {jax.process_index()} hold rows {starts} of each '
                     'batch, not one run of rows: order the mesh so that each process holds '
                     'consecutive rows of the data axis.')
  return slice(starts[0][0], starts[-1][1])
