"""Attention maps of any network, captured as it runs: one path for every model and variant.

`capture(model, variables, ...)` applies `model` once under `nn.intercept_methods`: before each
call of an `Attention` module runs, the module's own `probabilities(inputs_q, inputs_kv, mask,
bias)` is computed with the same arguments (the core's scores -> mask -> softmax, float32, on
the reference path, so no fused kernel that forms no `[q, k]` map is in the way). The network
needs no `sow` and no flag; mixtures give their weighted sum. The capture is traceable: a caller
may `jax.jit` or `jax.vmap` a function that returns the maps.

`checked(entry)` turns a captured map into NumPy after checking that every valid query's row
sums to 1 (the T5 attention-maps command; the diagnostics' statistics).
"""
import dataclasses
import inspect
from typing import Any

import flax.linen as nn
import numpy as np

from synth_jax.attention import core
from synth_jax.attention import masks

# Rows must sum to 1 to this tolerance (float32 softmax over at most a few thousand keys).
ROW_SUM_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Captured:
  """One attention call: its module `path` (e.g. `('encoder', 'layers_0', 'attention')`), its
  `[batch | 1, heads, q_len, k_len]` float32 `probabilities` and the call's `masks.Mask`."""
  path: tuple
  probabilities: Any
  mask: masks.Mask


def capture(model: nn.Module, variables, *args, **kwargs) -> list[Captured]:
  """Every attention call's maps of `model.apply(variables, *args, **kwargs)`, in call order."""
  captured = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    module = context.module
    if context.method_name == '__call__' and isinstance(module, core.Attention):
      call = inspect.signature(type(module).__call__).bind(module, *call_args, **call_kwargs)
      call.apply_defaults()
      inputs_q, inputs_kv, bias = (call.arguments[k] for k in ('inputs_q', 'inputs_kv', 'bias'))
      mask = masks.as_mask(call.arguments['mask'], *inputs_q.shape[:2], inputs_kv.shape[1])
      probabilities = module.probabilities(inputs_q, inputs_kv, mask, bias,
                                           decode=call.arguments['decode'])
      captured.append(Captured(tuple(module.path), probabilities, mask))
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(interceptor):
    model.apply(variables, *args, **kwargs)
  return captured


def checked(entry: Captured) -> dict[str, Any]:
  """`{'path', 'probabilities' [batch, heads, q, k], 'visible' [batch, 1 | heads, q, k] bool,
  'query_valid' [batch, q] bool}` in NumPy; raises if a valid query's row does not sum to 1."""
  visible = np.asarray(entry.mask.dense())
  query_valid = np.asarray(entry.mask.query_valid) & np.any(visible, axis=(1, 3))
  p = np.broadcast_to(np.asarray(entry.probabilities, np.float32),
                      (query_valid.shape[0],) + tuple(entry.probabilities.shape[1:]))
  row_sums = np.where(query_valid[:, None, :], p.sum(-1), 1.0)
  if not np.all(np.isfinite(p)) or np.max(np.abs(row_sums - 1.0)) > ROW_SUM_TOLERANCE:
    raise RuntimeError(f'{"/".join(entry.path)}: attention rows do not sum to 1 (largest error '
                       f'{np.max(np.abs(row_sums - 1.0)):.2e}); the attention core is broken.')
  return {'path': entry.path, 'probabilities': p, 'visible': visible, 'query_valid': query_valid}
