"""Training-step benchmark of every attention type at T5-base v1.1 shapes (issue 6).

  python -m synth_jax.bench                              # all types, base, batch 128, packed
  python -m synth_jax.bench --types vanilla --fused cudnn
  python -m synth_jax.bench --types vanilla,random --seq_sweep --json sweep.json
  python -m synth_jax.bench --preset tiny --steps 2      # CPU smoke run

One row per attention type (set as encoder and decoder self-attention; cross-attention stays
vanilla, as in `gin/models/t5_1_1_base.gin`): the time of a whole training step
(`train_state.train_step`: forward, backward, Adafactor update) after warmup, tokens/s, the model
FLOPs of the step counted analytically from the shapes (`model_flops`), MFU against the device's
bf16 peak, and peak device memory. Batches are synthetic random tokens laid out like
`seqio.EncDecFeatureConverter`'s output, so nothing here imports seqio or TensorFlow.

Each row runs in its own process by default (`--isolate`), so peak memory is that row's alone and
an out-of-memory row does not take the others down.

Step time: the median over 3 rounds of `--steps` steps dispatched back to back (as `train.train`
runs them), per step; `synced_step_time_s` in the JSON is the median of steps each waited for,
which adds the host's dispatch of the next step (about a quarter more at T5-base on an H100).

Definitions: tokens per step = batch x (inputs length + targets length), padding included (the
step computes on every position). Model FLOPs count matmuls only (see `model_flops`); `traced` is
the same count read off the traced program, a check on the formulas. The JSON also keeps XLA's
own cost analysis (`xla_flops`, `xla_bytes_accessed`), which on GPU leaves out library calls
(cuBLAS GEMMs, cuDNN), so it is no FLOP count there. `--profile DIR` adds device time by kernel.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import functools
import glob
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Optional

import numpy as np

from synth_jax.attention import dense
from synth_jax.attention import random as random_attention
from synth_jax.attention import registry
from synth_jax.attention import segment_slots as segment_slots_lib

DEFAULT_TYPES = tuple(registry.names()) + ('random+vanilla',)

# The model widths of `gin/models/t5_1_1_{base,tiny}.gin`, the feature lengths and batch of T5
# span-corruption pretraining (tiny: a seconds-long CPU smoke run).
PRESETS = {
    'base': dict(
        model=dict(vocab_size=32128, dtype='bfloat16', emb_dim=768, num_heads=12, head_dim=64,
                   num_encoder_layers=12, num_decoder_layers=12, mlp_dim=2048),
        inputs_length=512, targets_length=114, batch_size=128),
    'tiny': dict(
        model=dict(vocab_size=512, dtype='float32', emb_dim=32, num_heads=2, head_dim=16,
                   num_encoder_layers=2, num_decoder_layers=2, mlp_dim=64),
        inputs_length=32, targets_length=16, batch_size=8),
}

# Dense bf16 peak TFLOP/s per JAX device, matched in order against the lowercased
# `device_kind` (so 'h100 pcie' is tried before 'h100'). TPU v2/v3 devices are single cores.
PEAK_TFLOPS = (
    ('gh200', 989.0), ('h100 pcie', 756.0), ('h100', 989.0), ('h200', 989.0), ('h800', 989.0),
    ('b200', 2250.0), ('a100', 312.0), ('l4', 121.0),
    ('tpu v2', 22.5), ('tpu v3', 61.5), ('tpu v4', 275.0), ('tpu v5 lite', 197.0),
    ('tpu v5e', 197.0), ('tpu v5', 459.0), ('tpu v6 lite', 918.0), ('tpu v6e', 918.0),
)


def peak_tflops_for(device_kind: str) -> Optional[float]:
  """The dense bf16 peak of one device of `device_kind`, or None when unknown (CPUs)."""
  kind = device_kind.lower()
  for name, tflops in PEAK_TFLOPS:
    if name in kind:
      return tflops
  return None


# ----------------------------------------------------------------------------- FLOP counting
@dataclasses.dataclass(frozen=True)
class Matmul:
  """One matrix product of the forward pass.

  flops: 2 * M * N * K of the product, summed over batch dims.
  gradients: how many operands the backward pass differentiates, each at the same cost: 2 (dX
    and dW, or both activations), 1 when one operand is a frozen parameter (no weight gradient).
  contracts: False for an outer product: its forward is elementwise (one multiply per output,
    not counted), but each of its gradients contracts over the other factor at `flops`.
  overhead: a matmul of our implementation rather than of the model's equations (a softmax
    denominator, a gradient summed by a one-hot product instead of a scatter): counted apart,
    outside the model FLOPs that MFU divides.
  """
  name: str
  flops: int
  gradients: int = 2
  contracts: bool = True
  overhead: bool = False

  @property
  def forward(self) -> int:
    return self.flops if self.contracts else 0

  @property
  def training(self) -> int:
    return self.forward + self.gradients * self.flops


def attention_logit_matmuls(name: str, batch: int, q_len: int, k_len: int, max_key_length: int,
                            embed: int, heads: int, head_dim: int) -> list[Matmul]:
  """The matmuls one single (non-mixture) variant spends on its logits `[b, h, q, k]`."""
  hd = heads * head_dim
  if name in ('vanilla', 'orthogonal'):
    # Orthogonal W_Q/W_K are frozen: the backward pass needs dX but no dW.
    projection_gradients = 1 if name == 'orthogonal' else 2
    return [Matmul('query', 2 * batch * q_len * embed * hd, projection_gradients),
            Matmul('key', 2 * batch * k_len * embed * hd, projection_gradients),
            Matmul('query.key', 2 * batch * heads * q_len * k_len * head_dim)]
  if name == 'dense':
    # W2 maps to all max_key_length columns; the logits slice the first k_len afterwards.
    return [Matmul('dense_1', 2 * batch * q_len * embed * hd),
            Matmul('dense_2', 2 * batch * q_len * hd * max_key_length)]
  if name == 'factorized_dense':
    a = dense.default_factor(max_key_length)
    b = max_key_length // a
    return [Matmul('factor_a', 2 * batch * q_len * embed * heads * a),
            Matmul('factor_b', 2 * batch * q_len * embed * heads * b),
            Matmul('A_i (x) B_i', 2 * batch * heads * q_len * a * b, contracts=False)]
  if name in ('random', 'fixed_random'):
    return []  # R is sliced, not multiplied (fixed_random's frozen R has nothing to skip)
  if name == 'factorized_random':
    # R1 R2^T is batch-independent: once a step (packed batches then index it per example).
    rank = random_attention.FactorizedRandomSynthesizer.rank
    return [Matmul('R1.R2', 2 * heads * q_len * k_len * rank)]
  raise ValueError(f'no FLOP formula for attention type {name!r}; add one to '
                   f'synth_jax.bench.attention_logit_matmuls.')


def attention_matmuls(attention_type: str, batch: int, q_len: int, k_len: int,
                      max_key_length: int, embed: int, heads: int, head_dim: int,
                      pack: bool = True, segment_slots: int = 0) -> list[Matmul]:
  """One attention layer: each member's logits and mix (PV), plus the shared value and output.

  A mixture's members each mix the shared value (`mixture.py` sums their outputs). Unpacked, a
  random synthesizer normalizes its shared logits once per step (`fused.shared_scores_attention`):
  its softmax denominators are one more matmul. Packed with `segment_slots` (self-attention,
  `T5Config.packed_segment_slots`), it does so slot by slot (`segment_slots`): the slots' padding,
  their denominators and the forward recomputed in the backward pass are overhead. Packed
  without slots, a trainable score map's gradient is one more (`packed_table`).
  """
  hd = heads * head_dim
  matmuls = []
  for member in registry.members(attention_type):
    matmuls += attention_logit_matmuls(member, batch, q_len, k_len, max_key_length, embed,
                                       heads, head_dim)
    shared = registry.has_shared_logits(member)
    if shared and not pack:
      matmuls.append(Matmul('denominators', 2 * batch * heads * q_len * k_len, gradients=1,
                            overhead=True))
    if shared and pack and segment_slots:
      cells = sum(c * c for c in segment_slots_lib.capacities(q_len, segment_slots))
      matmuls += [
          Matmul('slot padding', 2 * batch * heads * (cells - q_len * k_len) * head_dim,
                 overhead=True),
          Matmul('slot denominators', 2 * batch * heads * cells, gradients=1, overhead=True),
          # The backward pass recomputes the slots' mix and denominators (`fused`).
          Matmul('slot recompute', 2 * batch * heads * cells * (head_dim + 1), gradients=0,
                 overhead=True)]
    elif member in ('random', 'factorized_random') and pack:
      # The score map's gradient sums the examples' rows by position with a one-hot matmul
      # (`packed_table`), [max_q, batch*q] x [batch*q, heads*max_k]; backward only.
      matmuls.append(Matmul('score map gradient', 2 * max_key_length * batch * q_len * heads
                            * max_key_length, gradients=1, contracts=False, overhead=True))
    matmuls.append(Matmul('probs.value', 2 * batch * heads * q_len * k_len * head_dim))
  return matmuls + [Matmul('value', 2 * batch * k_len * embed * hd),
                    Matmul('out', 2 * batch * q_len * hd * embed)]


RELPOS_BUCKETS = 32  # layers.RelativePositionBiases default


def model_flops(cfg, batch: int, inputs_length: int, targets_length: int,
                pack: bool = True) -> dict:
  """Matmul FLOPs of one training step of `Transformer(cfg)`, counted from the shapes.

  pack: packed batches (segment ids) or one example per row, which changes the random
    synthesizers' normalization (see `attention_matmuls`).

  Returns `{'forward': int, 'training': int, 'parts': {part: training FLOPs}, 'overhead': int}`,
  where training is forward + backward (3x forward, less the weight gradients of frozen
  parameters) and overhead the training FLOPs of `Matmul.overhead` products (not in 'training').
  Elementwise work (norms, softmax, the optimizer) is not counted, as in the usual MFU convention.
  """
  e, h, d = cfg.emb_dim, cfg.num_heads, cfg.head_dim
  mlp = lambda length: [Matmul(f'mlp_{i}', 2 * batch * length * e * cfg.mlp_dim)
                        for i in range(len(cfg.mlp_activations) + 1)]
  attend = functools.partial(attention_matmuls, batch=batch, embed=e, heads=h, head_dim=d)
  slots = cfg.packed_segment_slots
  per_layer = {
      'encoder_attention': (cfg.num_encoder_layers, attend(
          cfg.encoder_attention, q_len=inputs_length, k_len=inputs_length,
          max_key_length=cfg.max_encoder_length, pack=pack, segment_slots=slots)),
      'encoder_mlp': (cfg.num_encoder_layers, mlp(inputs_length)),
      'decoder_self_attention': (cfg.num_decoder_layers, attend(
          cfg.decoder_attention, q_len=targets_length, k_len=targets_length,
          max_key_length=cfg.max_decoder_length, pack=pack, segment_slots=slots)),
      'decoder_cross_attention': (cfg.num_decoder_layers, attend(
          cfg.cross_attention, q_len=targets_length, k_len=inputs_length,
          max_key_length=cfg.max_encoder_length)),
      'decoder_mlp': (cfg.num_decoder_layers, mlp(targets_length)),
      'logits': (1, [Matmul('logits', 2 * batch * targets_length * e * cfg.vocab_size)]),
      # T5's relative-position bias, once per stack: table [heads, buckets] . one_hot[buckets, q, k]
      # (layers.RelativePositionBiases); only the table gets a gradient. Batch-free.
      'relpos_bias': (1, [Matmul('relpos_encoder', 2 * h * RELPOS_BUCKETS * inputs_length ** 2, 1),
                          Matmul('relpos_decoder', 2 * h * RELPOS_BUCKETS * targets_length ** 2,
                                 1)]),
  }
  forward = sum(n * m.forward for n, ms in per_layer.values() for m in ms if not m.overhead)
  parts = {part: n * sum(m.training for m in ms if not m.overhead)
           for part, (n, ms) in per_layer.items()}
  overhead = sum(n * m.training for n, ms in per_layer.values() for m in ms if m.overhead)
  return {'forward': forward, 'training': sum(parts.values()), 'parts': parts,
          'overhead': overhead}


def traced_matmul_flops(jaxpr) -> int:
  """2 * M * N * K of every contracting `dot_general` in a (closed) jaxpr, sub-jaxprs included.

  An independent count of what the traced program multiplies, to check `model_flops` against.
  Outer products (no contracted dim) are skipped: elementwise work, as in `model_flops`. Fused
  attention kernels (cuDNN) are custom calls and do not appear. A `cond` counts the branch its
  predicate selects when true (its last): the step's only conds choose the packed slot path
  (`packed_shared_scores`) when a batch allows it, and the benchmark's batches do (`measure`
  records `segments_per_row_max`). A new cond must keep its fast path in the true branch.
  """
  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      if contract:
        total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
      continue
    repeat = eqn.params.get('length', 1) if eqn.primitive.name == 'scan' else 1
    if eqn.primitive.name == 'cond':
      total += traced_matmul_flops(eqn.params['branches'][-1])
      continue
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        if hasattr(sub, 'eqns') or hasattr(getattr(sub, 'jaxpr', None), 'eqns'):
          total += repeat * traced_matmul_flops(sub)
  return total


# ----------------------------------------------------------------------------- synthetic batches
def synthetic_batch(batch_size: int, inputs_length: int, targets_length: int, vocab_size: int,
                    pack: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens laid out like `seqio.EncDecFeatureConverter(pack=pack)`'s output.

  Token 0 is padding and 1 ends each example (EOS). Unpacked: one example per row, of a random
  length between half and all of the row, then padding; four features. Packed: examples of a
  quarter to half the row, one after another while both their inputs and targets fit, with
  segment ids (1, 2, ...), positions restarting at 0, and decoder inputs shifted right within each
  segment (0 starts every segment).
  """
  rng = np.random.default_rng(seed)
  shape_in, shape_out = (batch_size, inputs_length), (batch_size, targets_length)
  features = {name: np.zeros(shape, np.int32) for name, shape in (
      ('encoder_input_tokens', shape_in), ('encoder_segment_ids', shape_in),
      ('encoder_positions', shape_in), ('decoder_target_tokens', shape_out),
      ('decoder_input_tokens', shape_out), ('decoder_segment_ids', shape_out),
      ('decoder_positions', shape_out))}

  def example(length):
    return np.append(rng.integers(2, vocab_size, length - 1), 1)

  for row in range(batch_size):
    start_in = start_out = 0
    segment = 0
    while True:
      if pack:
        n_in = int(rng.integers(max(1, inputs_length // 4), max(1, inputs_length // 2) + 1))
        n_out = max(1, n_in * targets_length // inputs_length)
      else:
        n_in = int(rng.integers(max(1, inputs_length // 2), inputs_length + 1))
        n_out = int(rng.integers(max(1, targets_length // 2), targets_length + 1))
      if start_in + n_in > inputs_length or start_out + n_out > targets_length:
        break
      segment += 1
      inputs, targets = example(n_in), example(n_out)
      span_in, span_out = slice(start_in, start_in + n_in), slice(start_out, start_out + n_out)
      features['encoder_input_tokens'][row, span_in] = inputs
      features['encoder_segment_ids'][row, span_in] = segment
      features['encoder_positions'][row, span_in] = np.arange(n_in)
      features['decoder_target_tokens'][row, span_out] = targets
      features['decoder_input_tokens'][row, span_out] = np.append(0, targets[:-1])
      features['decoder_segment_ids'][row, span_out] = segment
      features['decoder_positions'][row, span_out] = np.arange(n_out)
      start_in, start_out = start_in + n_in, start_out + n_out
      if not pack:
        break
  features['decoder_loss_weights'] = (features['decoder_target_tokens'] > 0).astype(np.int32)
  if not pack:
    for name in ('encoder_segment_ids', 'encoder_positions', 'decoder_segment_ids',
                 'decoder_positions'):
      del features[name]
  return features


# ----------------------------------------------------------------------------- one measurement
def model_config(preset: str, attention_type: str, inputs_length: int, targets_length: int,
                 fused: Optional[str] = None, segment_slots: Optional[int] = None,
                 logits_matmul_dtype: Optional[str] = None):
  """The `T5Config` of `preset` with `attention_type` self-attention, score maps sized to fit.

  fused: `T5Config.fused_attention` ('cudnn', 'xla', 'auto'): every vanilla or orthogonal
    attention (self and cross) through `jax.nn.dot_product_attention`.
  segment_slots: `T5Config.packed_segment_slots` (None: its default).
  logits_matmul_dtype: `T5Config.logits_matmul_dtype` (None: its default, float32).
  """
  from synth_jax import network  # pylint: disable=g-import-not-at-top (imports gin)
  return network.T5Config(
      **PRESETS[preset]['model'], mlp_activations=('gelu', 'linear'), dropout_rate=0.0,
      logits_via_embedding=False, encoder_attention=attention_type,
      decoder_attention=attention_type, cross_attention='vanilla',
      max_encoder_length=inputs_length, max_decoder_length=targets_length,
      fused_attention=fused,
      **({} if segment_slots is None else {'packed_segment_slots': segment_slots}),
      **({} if logits_matmul_dtype is None else {'logits_matmul_dtype': logits_matmul_dtype}))


LOCK_VARIABLE = 'SYNTH_JAX_BENCH_DEVICE_LOCK'


@contextlib.contextmanager
def device_lock():
  """Exclusive use of the device among `--jobs` workers (a file lock the parent names).

  Workers build their train states in parallel (CPU-bound compilation of the initializers) and
  take turns to compile (which autotunes kernels on the device) and time the step.
  """
  path = os.environ.get(LOCK_VARIABLE)
  if not path:
    yield
    return
  import fcntl  # pylint: disable=g-import-not-at-top
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield  # closing the file releases the lock


def create_state(model, make_optimizer, batch, mesh, seed: int, on_host: bool):
  """`train_state.create`, optionally run on the host CPU and then copied to `mesh`.

  On a GPU, compiling the initializers (a few hundred inlined threefry hashes) takes 100+ s;
  the host CPU compiles and runs them in a fraction of that. The random bits are the same either
  way (threefry); the normal samples made from them may differ in the last bit between backends.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from synth_jax import train_state  # pylint: disable=g-import-not-at-top
  try:
    host = jax.devices('cpu')[:1]
  except RuntimeError:  # JAX_PLATFORMS without 'cpu'
    host = None
  if not on_host or not host or jax.default_backend() == 'cpu':
    return train_state.create(model, make_optimizer, batch, mesh, jax.random.key(seed))
  host_mesh = jax.sharding.Mesh(np.array(host).reshape((1,) * len(mesh.axis_names)),
                                mesh.axis_names)
  with jax.default_device(host[0]):
    state, host_shardings, optimizer = train_state.create(model, make_optimizer, batch, host_mesh,
                                                          jax.random.key(seed))
  shardings = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s.spec), host_shardings)
  return jax.device_put(state, shardings), shardings, optimizer


def is_out_of_memory(error: str) -> bool:
  return 'RESOURCE_EXHAUSTED' in error or 'out of memory' in error.lower()


PIPELINED_ROUNDS = 3


def measure(attention_type: str, preset: str = 'base', batch_size: Optional[int] = None,
            inputs_length: Optional[int] = None, targets_length: Optional[int] = None,
            steps: int = 10, warmup: int = 2, pack: bool = True, fused: Optional[str] = None,
            peak_tflops: Optional[float] = None, seed: int = 0,
            profile_dir: Optional[str] = None, init_on_host: bool = True,
            segment_slots: Optional[int] = None,
            logits_matmul_dtype: Optional[str] = None) -> dict:
  """Times `steps` training steps of one attention type in this process; returns one row.

  profile_dir: also trace two more steps there and add their device time by kernel
    (`row['profile']`, see `summarize_trace`).
  segment_slots, logits_matmul_dtype: the `T5Config` fields (None: their defaults).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from synth_jax import network  # pylint: disable=g-import-not-at-top
  from synth_jax import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from synth_jax import partitioning  # pylint: disable=g-import-not-at-top
  from synth_jax import train_state  # pylint: disable=g-import-not-at-top

  shapes = PRESETS[preset]
  batch_size = batch_size or shapes['batch_size']
  inputs_length = inputs_length or shapes['inputs_length']
  targets_length = targets_length or shapes['targets_length']
  cfg = model_config(preset, attention_type, inputs_length, targets_length, fused,
                     segment_slots, logits_matmul_dtype)
  devices = jax.devices()
  peak = peak_tflops or peak_tflops_for(devices[0].device_kind)
  flops = model_flops(cfg, batch_size, inputs_length, targets_length, pack)
  tokens = batch_size * (inputs_length + targets_length)
  row = {'attention_type': attention_type, 'fused': fused, 'batch_size': batch_size,
         'inputs_length': inputs_length, 'targets_length': targets_length,
         'tokens_per_step': tokens, 'model_flops_per_step': flops['training'],
         'model_flops_forward': flops['forward'], 'model_flops_by_part': flops['parts'],
         'overhead_flops_per_step': flops['overhead'],
         'device_kind': devices[0].device_kind, 'num_devices': len(devices),
         'peak_tflops_per_device': peak, 'logits_matmul_dtype': cfg.logits_matmul_dtype.name,
         'xla_flags': os.environ.get('XLA_FLAGS', ''), 'error': None}
  if batch_size % len(devices):
    raise ValueError(f'--batch_size {batch_size} must be a multiple of the {len(devices)} '
                     f'devices the batch is split over.')

  def make_optimizer(plan):
    return optimizer_lib.adafactor(optimizer_lib.rsqrt_schedule(), plan)

  try:
    start = time.perf_counter()
    model = network.Transformer(cfg)
    mesh = partitioning.create_mesh(model_parallelism=1)
    data_sharding = partitioning.data_sharding(mesh)
    batch = synthetic_batch(batch_size, inputs_length, targets_length, cfg.vocab_size, pack,
                            seed)
    if pack:  # more segments in a row than slots: the per-example path, not the one counted
      row['segments_per_row_max'] = int(max(batch['encoder_segment_ids'].max(),
                                            batch['decoder_segment_ids'].max()))
      row['packed_segment_slots'] = cfg.packed_segment_slots
    state, shardings, optimizer = create_state(model, make_optimizer, batch, mesh, seed,
                                               init_on_host)
    batch, rng = jax.device_put(batch, data_sharding), jax.random.key(seed + 1)
    step = jax.jit(functools.partial(train_state.train_step, model, optimizer),
                   in_shardings=(shardings, data_sharding, None),
                   out_shardings=(shardings, None), donate_argnums=(0,))
    row['init_s'] = time.perf_counter() - start
    with device_lock():
      start = time.perf_counter()
      traced = step.trace(state, batch, rng)
      compiled = traced.lower().compile()
      row['compile_s'] = time.perf_counter() - start
      synced = []  # each step waited for: latency, host dispatch included
      for i in range(warmup + steps):
        start = time.perf_counter()
        state, metrics = compiled(state, batch, rng)
        jax.block_until_ready((state, metrics))
        if i >= warmup:
          synced.append(time.perf_counter() - start)
      times = []  # per-step time of `steps` steps dispatched back to back, as `train` runs them
      for _ in range(PIPELINED_ROUNDS):
        start = time.perf_counter()
        for _ in range(steps):
          state, metrics = compiled(state, batch, rng)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / steps)
      if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
          for _ in range(2):
            state, metrics = compiled(state, batch, rng)
          jax.block_until_ready((state, metrics))
        row['profile'] = summarize_trace(profile_dir, steps=2)
    row['loss'] = float(metrics['loss'])
  except Exception as e:  # pylint: disable=broad-except
    # An out-of-memory row is a result (the caller may retry smaller); others are too, with the
    # message, so one broken type does not hide the rest of the table.
    message = f'{type(e).__name__}: {e}'
    if not is_out_of_memory(message):
      traceback.print_exc()
    row.update(error=message.splitlines()[0][:500], out_of_memory=is_out_of_memory(message))
    return row

  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  memory = compiled.memory_analysis()
  row.update(traced_matmul_flops=traced_matmul_flops(traced.jaxpr),
             xla_flops=cost.get('flops'), xla_bytes_accessed=cost.get('bytes accessed'),
             xla_temp_bytes=getattr(memory, 'temp_size_in_bytes', None),
             xla_argument_bytes=getattr(memory, 'argument_size_in_bytes', None))
  step_time = statistics.median(times)
  achieved = flops['training'] / step_time
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  peaks = [s['peak_bytes_in_use'] for s in stats if 'peak_bytes_in_use' in s]
  row.update(
      step_times_s=times, step_time_s=step_time, steps_per_s=1.0 / step_time,
      synced_step_times_s=synced, synced_step_time_s=statistics.median(synced),
      tokens_per_s=tokens / step_time, achieved_tflops=achieved / 1e12,
      mfu=achieved / (peak * 1e12 * len(devices)) if peak else None,
      peak_memory_bytes=max(peaks) if peaks else None, out_of_memory=False)
  return row


KERNEL_CATEGORIES = (  # (category, substrings of a GPU kernel name); the first match wins
    ('matmul', ('gemm', 'nvjet', 'xmma', 'cutlass', 'cublas')),
    ('fused attention', ('cudnn', 'fmha', 'flash')),
    ('scatter', ('scatter',)), ('gather', ('gather',)), ('transpose', ('transpose',)),
    ('reduce', ('reduce',)),
)


def summarize_trace(profile_dir: str, steps: int, top: int = 30) -> dict:
  """Device time by kernel and by kind of kernel (ms per step) from the newest perfetto trace.

  Reads the Chrome-trace JSON that `jax.profiler.trace(create_perfetto_trace=True)` writes and
  sums the events of the device processes ('/device:GPU:0', ...) by kernel name: XLA names a
  fusion's kernel after the fusion (`wrapped_scatter_1`), libraries keep theirs (`nvjet_...`).
  Returns `{'total_ms', 'span_ms', 'by_category': {kind: ms}, 'top': [{kernel, ms, calls}]}`,
  everything per step.
  """
  import gzip  # pylint: disable=g-import-not-at-top
  paths = glob.glob(os.path.join(profile_dir, '**', 'perfetto_trace.json.gz'), recursive=True)
  if not paths:
    return {}
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    events = json.load(f)['traceEvents']
  devices = {e['pid'] for e in events if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and e['args'].get('name', '').startswith('/device:')}
  kernels = [e for e in events if e.get('ph') == 'X' and e.get('pid') in devices]
  if not kernels:
    return {}
  by_kernel, by_category = {}, {}
  for e in kernels:
    ms = e['dur'] / 1e3 / steps
    entry = by_kernel.setdefault(e['name'], {'kernel': e['name'][:100], 'ms': 0.0, 'calls': 0})
    entry['ms'] += ms
    entry['calls'] += 1 / steps
    name = e['name'].lower()
    kind = next((k for k, keys in KERNEL_CATEGORIES if any(key in name for key in keys)),
                'other fusion')
    by_category[kind] = by_category.get(kind, 0.0) + ms
  span = max(e['ts'] + e['dur'] for e in kernels) - min(e['ts'] for e in kernels)
  return {'total_ms': sum(by_category.values()), 'span_ms': span / 1e3 / steps,
          'by_category': dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
          'top': sorted(by_kernel.values(), key=lambda t: -t['ms'])[:top]}


# ----------------------------------------------------------------------------- the command
def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--types', default=','.join(DEFAULT_TYPES),
                      help='comma-separated attention types (mixtures like random+vanilla)')
  parser.add_argument('--preset', choices=sorted(PRESETS), default='base')
  parser.add_argument('--batch_size', type=int, help='default: the preset\'s (base: 128)')
  parser.add_argument('--inputs_length', type=int, help='default: the preset\'s (base: 512)')
  parser.add_argument('--targets_length', type=int, help='default: the preset\'s (base: 114)')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  parser.add_argument('--pack', action=argparse.BooleanOptionalAction, default=True,
                      help='packed batches with segment ids (default) or one example per row')
  parser.add_argument('--fused', choices=('xla', 'cudnn', 'auto'),
                      help='vanilla/orthogonal attention (self and cross) through '
                           'jax.nn.dot_product_attention (T5Config.fused_attention)')
  parser.add_argument('--segment_slots', type=int,
                      help='packed batches: T5Config.packed_segment_slots (0: random '
                           'synthesizers take the per-example path)')
  parser.add_argument('--logits_matmul_dtype', choices=('float32', 'bfloat16'),
                      help='T5Config.logits_matmul_dtype (default float32, as T5X): bfloat16 '
                           'runs the output projection on bf16 tensor cores, float32 logits')
  parser.add_argument('--init_on_host', action=argparse.BooleanOptionalAction, default=True,
                      help='build the train state on the host CPU, then copy it to the device '
                           '(much faster to compile on GPUs)')
  parser.add_argument('--seq_sweep', action='store_true',
                      help='encoder length x1, x2, x4, x8 (base: 512..4096) at fixed tokens '
                           'per batch; the batch shrinks to match')
  parser.add_argument('--peak_tflops', type=float,
                      help='bf16 peak per device; default: looked up from the device kind')
  parser.add_argument('--halve_on_oom', action='store_true',
                      help='retry an out-of-memory row at half the batch until it fits')
  parser.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=True,
                      help='one process per row (per-row peak memory; an OOM stays contained)')
  parser.add_argument('--jobs', type=int, default=1,
                      help='rows prepared at once (with --isolate); they take turns on the '
                           'device to compile and time, so timings are unaffected, but each '
                           'waiting row holds its train state (a few GiB at base): rows near '
                           'the memory limit then run out of memory')
  parser.add_argument('--xla_flags', action='append',
                      help='repeatable: every row is measured once per value, in a worker whose '
                           'XLA_FLAGS are this value (not added to ours), e.g. --xla_flags= '
                           '--xla_flags=--xla_gpu_triton_gemm_any=true to A/B a compiler '
                           'option (the = keeps a leading -- a value)')
  parser.add_argument('--json', help='write the rows and the run\'s setup here')
  parser.add_argument('--profile',
                      help='trace 2 extra steps into this dir; print device time by kernel')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  args.types = [t.strip() for t in args.types.split(',') if t.strip()]
  for name in args.types:
    registry.members(name)  # unknown names fail here, with the list of valid ones
  if args.xla_flags and not args.isolate:
    parser.error('--xla_flags needs --isolate (XLA reads its flags once per process); for one '
                 'process set the XLA_FLAGS environment variable instead.')
  return args


def points(args) -> list[tuple[str, int, int]]:
  """(attention type, inputs length, batch size) of every row to measure."""
  shapes = PRESETS[args.preset]
  length = args.inputs_length or shapes['inputs_length']
  batch = args.batch_size or shapes['batch_size']
  if not args.seq_sweep:
    return [(t, length, batch) for t in args.types]
  tokens = batch * length
  return [(t, length * f, max(1, tokens // (length * f))) for t in args.types for f in (1, 2, 4, 8)]


def run_in_subprocess(args, attention_type: str, length: int, batch: int,
                      lock: Optional[str] = None, xla_flags: Optional[str] = None) -> dict:
  """`measure` in a fresh Python process (its own device memory and peak counter).

  lock: a file the `--jobs` workers take turns on (see `device_lock`).
  xla_flags: the worker's `XLA_FLAGS` (None: ours).
  """
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    command = [sys.executable, '-m', 'synth_jax.bench', '--no-isolate', '--json', out,
               '--types', attention_type, '--preset', args.preset, '--batch_size', str(batch),
               '--inputs_length', str(length), '--steps', str(args.steps),
               '--warmup', str(args.warmup), '--seed', str(args.seed),
               '--pack' if args.pack else '--no-pack',
               '--init_on_host' if args.init_on_host else '--no-init_on_host']
    for flag in ('targets_length', 'fused', 'peak_tflops', 'profile', 'segment_slots',
                 'logits_matmul_dtype'):
      if getattr(args, flag) is not None:
        command += [f'--{flag}', str(getattr(args, flag))]
    env = dict(os.environ)
    if xla_flags is not None:
      env['XLA_FLAGS'] = xla_flags
    # JAX preallocates 75% of the GPU by default; a benchmark row may use nearly all of it.
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.95')
    if lock:
      # Waiting workers hold only their train state; none may reserve the memory up front.
      env.update({LOCK_VARIABLE: lock, 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'})
    # The worker's own tables would repeat ours; its stderr (errors, warnings) comes through.
    result = subprocess.run(command, env=env, check=False, stdout=subprocess.DEVNULL)
    if result.returncode or not os.path.exists(out):
      return {'attention_type': attention_type, 'inputs_length': length, 'batch_size': batch,
              'fused': args.fused, 'logits_matmul_dtype': args.logits_matmul_dtype,
              'xla_flags': env.get('XLA_FLAGS', ''), 'out_of_memory': False,
              'error': f'worker exited with status {result.returncode}'}
    with open(out) as f:
      return json.load(f)['rows'][0]


def run_point(args, attention_type: str, length: int, batch: int,
              lock: Optional[str] = None, xla_flags: Optional[str] = None) -> dict:
  """One row, halving the batch after each out-of-memory failure when `--halve_on_oom`."""
  tried = []
  while True:
    if args.isolate:
      row = run_in_subprocess(args, attention_type, length, batch, lock, xla_flags)
    else:
      row = measure(attention_type, args.preset, batch, length, args.targets_length, args.steps,
                    args.warmup, args.pack, args.fused, args.peak_tflops, args.seed,
                    profile_dir=args.profile, init_on_host=args.init_on_host,
                    segment_slots=args.segment_slots,
                    logits_matmul_dtype=args.logits_matmul_dtype)
    row['out_of_memory_batch_sizes'] = tried
    if not (row.get('out_of_memory') and args.halve_on_oom and batch // 2 >= 1):
      return row
    print(f'{attention_type}: out of memory at batch {batch}; retrying at {batch // 2}',
          flush=True)
    tried.append(batch)
    batch //= 2


def _gib(n):
  return f'{n / 2**30:.1f}' if n is not None else '-'


def flops_table(rows) -> str:
  """Training FLOPs per step by part of the network, one line per row."""
  parts = ('encoder_attention', 'encoder_mlp', 'decoder_self_attention',
           'decoder_cross_attention', 'decoder_mlp', 'logits')
  heads = ('enc attn', 'enc mlp', 'dec self', 'dec cross', 'dec mlp', 'logits')
  rows = [r for r in rows if 'model_flops_by_part' in r]
  largest = max((r['model_flops_per_step'] for r in rows), default=1)
  units = (('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6), ('FLOP', 1))
  unit, scale = next((u, s) for u, s in units if largest >= s)
  lines = [f'{"attention type":<22}{"batch":>6}{"enc len":>8}' + ''.join(f'{h:>10}' for h in heads)
           + f'{"total":>10}{"overhead":>10}{"traced":>10}   ({unit})']
  for row in rows:
    by_part = row['model_flops_by_part']
    traced = row.get('traced_matmul_flops')
    lines.append(f'{row["attention_type"]:<22}{row["batch_size"]:>6}{row["inputs_length"]:>8}'
                 + ''.join(f'{by_part[p] / scale:>10.3f}' for p in parts)
                 + f'{row["model_flops_per_step"] / scale:>10.3f}'
                 + f'{row.get("overhead_flops_per_step", 0) / scale:>10.3f}'
                 + (f'{traced / scale:>10.3f}' if traced is not None else f'{"-":>10}'))
  return '\n'.join(lines)


def results_table(rows) -> str:
  """The headline table: one line per row."""
  lines = [f'{"attention type":<22}{"batch":>6}{"enc len":>8}{"step ms":>10}{"tokens/s":>12}'
           f'{"TFLOP/step":>11}{"TFLOP/s":>9}{"MFU":>7}{"peak GiB":>9}  note']
  for row in rows:
    name = row['attention_type'] + (f' [{row["fused"]}]' if row.get('fused') else '')
    head = f'{name:<22}{row["batch_size"]:>6}{row["inputs_length"]:>8}'
    if row.get('error'):
      note = 'OOM' if row.get('out_of_memory') else row['error'][:60]
      lines.append(head + f'{"-":>10}{"-":>12}{"-":>11}{"-":>9}{"-":>7}{"-":>9}  {note}')
      continue
    mfu = f'{100 * row["mfu"]:.1f}%' if row.get('mfu') is not None else '-'
    oom = row.get('out_of_memory_batch_sizes')
    note = ' '.join(filter(None, [f'OOM at batch {",".join(map(str, oom))}' if oom else '',
                                  row.get('xla_flags', '')]))
    lines.append(head + f'{1e3 * row["step_time_s"]:>10.1f}{row["tokens_per_s"]:>12,.0f}'
                 f'{row["model_flops_per_step"] / 1e12:>11.2f}{row["achieved_tflops"]:>9.1f}'
                 f'{mfu:>7}{_gib(row.get("peak_memory_bytes")):>9}  {note}')
  return '\n'.join(lines)


def source_digests() -> dict[str, str]:
  """Short sha256 of each package source file, so a result names the code it measured."""
  root = os.path.dirname(os.path.abspath(__file__))
  digests = {}
  for path in sorted(glob.glob(os.path.join(root, '**', '*.py'), recursive=True)):
    with open(path, 'rb') as f:
      name = os.path.relpath(path, os.path.dirname(root))
      digests[name] = hashlib.sha256(f.read()).hexdigest()[:12]
  return digests


def profile_table(row) -> str:
  """The `--profile` summary of one row: time by kind of kernel, then the costliest kernels."""
  profile = row['profile']
  kinds = ', '.join(f'{kind} {ms:.1f}' for kind, ms in profile['by_category'].items())
  lines = [f'{row["attention_type"]}: {profile["total_ms"]:.1f} ms of kernels per step '
           f'({profile["span_ms"]:.1f} ms first to last): {kinds}']
  lines += [f'{t["ms"]:>9.2f} ms {t["calls"]:>6g} calls  {t["kernel"]}' for t in profile['top']]
  return '\n'.join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top (no device is touched in isolate mode)
  report = {
      'date': datetime.date.today().isoformat(),
      'command': 'python -m synth_jax.bench ' + ' '.join(sys.argv[1:] if argv is None else argv),
      'device_kind': None, 'jax_version': jax.__version__, 'preset': args.preset,
      'pack': args.pack, 'fused': args.fused, 'segment_slots': args.segment_slots,
      'logits_matmul_dtype': args.logits_matmul_dtype,
      'xla_flags': args.xla_flags or os.environ.get('XLA_FLAGS', ''),
      'steps': args.steps, 'warmup': args.warmup,
      'memory_per_row': args.isolate, 'source_sha256': source_digests(), 'rows': []}
  rows = report['rows']
  lock = None
  if args.jobs > 1 and args.isolate:
    lock = os.path.join(tempfile.mkdtemp(), 'device.lock')
  with concurrent.futures.ThreadPoolExecutor(args.jobs if lock else 1) as pool:
    futures = [pool.submit(run_point, args, *point, lock, flags)
               for point in points(args) for flags in (args.xla_flags or [None])]
    for future in futures:  # rows in order, each reported once it and those before are done
      row = future.result()
      rows.append(row)
      report['device_kind'] = report['device_kind'] or row.get('device_kind')
      timing = (f'  (init {row["init_s"]:.0f} s, compile {row["compile_s"]:.0f} s)'
                if 'compile_s' in row else '')
      print(results_table([row]).splitlines()[1] + timing, flush=True)
      if args.json:  # after every row, so a run cut short keeps what it measured
        with open(args.json, 'w') as f:
          json.dump(report, f, indent=1)
  for row in rows:
    if row.get('profile'):
      print('\n' + profile_table(row))
  print('\nModel FLOPs per training step, analytic by part ("overhead": matmuls of the '
        'implementation, not in the model FLOPs; "traced": the dot_generals of the compiled step, '
        'a cross-check of total + overhead):')
  print(flops_table(rows))
  print('\n' + results_table(rows))
  return report


if __name__ == '__main__':
  main()
