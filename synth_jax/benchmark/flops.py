"""Matmul FLOPs of a training step, read off its traced program.

The model FLOPs of a step are the matmuls of `train_state.train_step` traced with attention on its
reference path (`Transformer(attention_execution='reference')`: each variant's own logits, then
the core's softmax and mix). Whatever a variant, a mixture or a new file computes is counted as it
is written, so no formula per attention type has to be kept in step with the code. The program a
run executes (`--fused`: fast paths, fused kernels) is counted the same way; its difference from
the reference is the work of the implementation (softmax denominators done as matmuls, a one-hot
gradient), less what a cheaper exact rewrite saves; fused kernels, being custom calls, do not
show in it at all. MFU divides the model FLOPs.

Counted: 2 * M * N * K of every contracting `dot_general` (batch dims included), forward and
backward. Outer products and elementwise work (norms, softmax, the optimizer) are not, as in the
usual MFU convention.
"""
import functools
import math
import re
from typing import Iterator, Optional

# Dense bf16 peak TFLOP/s per JAX device, matched in order against the lowercased
# `device_kind` (so 'h100 pcie' is tried before 'h100'). TPU v2/v3 devices are single cores.
PEAK_TFLOPS = (
    ('gh200', 989.0), ('h100 pcie', 756.0), ('h100', 989.0), ('h200', 989.0), ('h800', 989.0),
    ('b200', 2250.0), ('a100', 312.0), ('l4', 121.0),
    ('tpu v2', 22.5), ('tpu v3', 61.5), ('tpu v4', 275.0), ('tpu v5 lite', 197.0),
    ('tpu v5e', 197.0), ('tpu v5', 459.0), ('tpu v6 lite', 918.0), ('tpu v6e', 918.0),
)

OTHER = 'other'  # matmuls outside any module (loss, optimizer)


def peak_tflops_for(device_kind: str) -> Optional[float]:
  """The dense bf16 peak of one device of `device_kind`, or None when unknown (CPUs)."""
  kind = device_kind.lower()
  for name, tflops in PEAK_TFLOPS:
    if name in kind:
      return tflops
  return None


def _sub_jaxprs(eqn) -> Iterator:
  for param in eqn.params.values():
    for sub in param if isinstance(param, (tuple, list)) else (param,):
      if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
        yield sub


def dot_generals(jaxpr, scope: str = '') -> Iterator[tuple[str, int]]:
  """`(name scope, 2 * M * N * K)` of every contracting `dot_general` in a (closed) jaxpr.

  Sub-jaxprs are walked (a `scan` body counts `length` times); a `cond` counts its costliest
  branch. The scope is the eqn's name stack under its enclosing eqns': Flax modules name it
  (`jvp(Transformer)/Transformer.encode/encoder/layers_0/mlp/wi_0`), and the backward pass sits
  under `transpose(...)`.
  """
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  for eqn in jaxpr.eqns:
    where = '/'.join(filter(None, (scope, str(eqn.source_info.name_stack))))
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      if contract:
        yield where, 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    elif eqn.primitive.name == 'cond':
      branches = [list(dot_generals(branch, where)) for branch in eqn.params['branches']]
      yield from max(branches, key=lambda found: sum(flops for _, flops in found))
    else:
      repeat = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
      for sub in _sub_jaxprs(eqn):
        for name, flops in dot_generals(sub, where):
          yield name, repeat * flops


def part_of(scope: str) -> str:
  """The network part a name scope belongs to: its first two modules under the root module.

  'transpose(jvp(Transformer))/Transformer.decode/decoder/layers_1/mlp/wo' -> 'decoder/mlp'.
  Method scopes of a module already named (`Transformer.decode`) and layer indices (`layers_1`)
  are dropped, so a part sums over the layers of a stack; a method called on a submodule
  (`relpos_bias.table_bias`) names that submodule.
  """
  modules = []
  for piece in scope.split('/'):
    piece = re.sub(r'^(\w+\()+|\)+$', '', piece)  # transform wrappers: jvp(...), transpose(...)
    module = piece.split('.')[0]
    if '.' in piece and modules and modules[-1] == module:
      continue
    if module and not re.fullmatch(r'layers_\d+', module):
      modules.append(module)
  return '/'.join(modules[1:3]) or OTHER


def matmul_flops(jaxpr) -> dict:
  """Matmul FLOPs of a traced training step.

  Returns `{'training': int, 'forward': int, 'parts': {part: training FLOPs}}`: training is
  forward + backward; forward leaves out what runs under `transpose` (the backward pass); parts
  (`part_of`, in the order the forward pass reaches them) sum to training.
  """
  counts = {'training': 0, 'forward': 0, 'parts': {}}
  for scope, flops in dot_generals(jaxpr):
    counts['training'] += flops
    if 'transpose(' not in scope:
      counts['forward'] += flops
    part = part_of(scope)
    counts['parts'][part] = counts['parts'].get(part, 0) + flops
  return counts


def step_flops(model, optimizer, state, batch, rng) -> dict:
  """`matmul_flops` of `train_state.train_step(model, optimizer)`, traced (nothing runs).

  state, batch, rng: arrays or `jax.ShapeDtypeStruct`s; only their shapes are read.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from synth_jax import train_state  # pylint: disable=g-import-not-at-top
  step = functools.partial(train_state.train_step, model, optimizer)
  return matmul_flops(jax.make_jaxpr(step)(state, batch, rng))


def model_flops(model, optimizer, state, batch, rng) -> dict:
  """The model FLOPs of a step: `step_flops` with attention on its reference path.

  model: a `network.Transformer` with any `attention_execution` (it never changes parameters).
  """
  reference = model.clone(attention_execution='reference')
  return step_flops(reference, optimizer, state, batch, rng)
