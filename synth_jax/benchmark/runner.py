"""One benchmark row: one attention type at one shape, measured in this process.

Step time: the median over `PIPELINED_ROUNDS` rounds of `steps` steps dispatched back to back (as
`train.train` runs them), per step; `synced_step_time_s` is the median of steps each waited for,
which adds the host's dispatch of the next step (about a quarter more at T5-base on an H100). The
row also keeps XLA's own cost analysis (`xla_flops`, `xla_bytes_accessed`), which on GPU leaves
out library calls (cuBLAS GEMMs, cuDNN), so it is no FLOP count there.
"""
import contextlib
import functools
import os
import pathlib
import statistics
import time
import traceback
from typing import NamedTuple, Optional

from gin import config_parser
import numpy as np

from synth_jax.benchmark import batches
from synth_jax.benchmark import flops as flops_lib
from synth_jax.benchmark import trace

# Each preset's model is the `T5Config` its `gin/models/` file binds (the one record of the T5
# sizes), with the macros named here; the feature lengths and batch are those of T5
# span-corruption pretraining. tiny: a CPU smoke run of every type (about 2 min on 2 cores, each
# row a process that compiles its step), its vocabulary cut to 512 so that the logits matmul
# does not dwarf the layers.
PRESETS = {
    'base': dict(gin_file='t5_1_1_base.gin', macros={},
                 inputs_length=512, targets_length=114, batch_size=128),
    'tiny': dict(gin_file='t5_1_1_tiny.gin', macros={'VOCAB_SIZE': 512},
                 inputs_length=32, targets_length=16, batch_size=8),
}
MODEL_GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / 'gin' / 'models'

PIPELINED_ROUNDS = 3
LOCK_VARIABLE = 'SYNTH_JAX_BENCH_DEVICE_LOCK'


class _Macro(NamedTuple):
  name: str


class _Reference(NamedTuple):
  name: str


class _KeepNames(config_parser.ParserDelegate):
  """Gin's parser without gin's configuration: macros and `@` references stay names."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference(scoped_configurable_name)

  def macro(self, macro_name):
    return _Macro(macro_name)


def model_arguments(preset: str, attention_type: str = 'vanilla') -> dict:
  """The arguments that `preset`'s gin file binds to `T5Config`, macros evaluated.

  The macros are the file's, then the preset's, then `ATTENTION_TYPE = attention_type` (as
  `--gin.ATTENTION_TYPE` sets it). The file is read with gin's parser but bound nowhere, so no
  one's gin configuration changes.
  """
  path = MODEL_GIN_DIR / PRESETS[preset]['gin_file']
  with open(path) as f:
    statements = list(config_parser.ConfigParser(f, _KeepNames()))
  if any(isinstance(s, config_parser.IncludeStatement) for s in statements):
    raise ValueError(f'{path}: the benchmark reads a model file on its own; inline its includes.')
  bindings = [s for s in statements
              if isinstance(s, config_parser.BindingStatement) and not s.scope]
  macros = {s.selector: s.value for s in bindings if not s.arg_name}
  macros.update(PRESETS[preset]['macros'], ATTENTION_TYPE=attention_type)

  def evaluate(value):
    if isinstance(value, _Macro):
      return evaluate(macros[value.name])
    if isinstance(value, _Reference):
      raise ValueError(f'{path}: T5Config takes plain values; @{value.name} is not one.')
    if isinstance(value, (list, tuple)):
      return type(value)(evaluate(v) for v in value)
    if isinstance(value, dict):
      return {k: evaluate(v) for k, v in value.items()}
    return value

  return {s.arg_name: evaluate(s.value) for s in bindings
          if s.arg_name and s.selector.rsplit('.', 1)[-1] == 'T5Config'}


def model_config(preset: str, attention_type: str, inputs_length: int, targets_length: int,
                 logits_matmul_dtype: Optional[str] = None):
  """The `T5Config` of `preset` with `attention_type` self-attention, score maps sized to fit.

  logits_matmul_dtype: `T5Config.logits_matmul_dtype` (None: its default, float32).
  """
  from synth_jax import network  # pylint: disable=g-import-not-at-top (imports jax)
  arguments = model_arguments(preset, attention_type)
  arguments.update(max_encoder_length=inputs_length, max_decoder_length=targets_length)
  if logits_matmul_dtype is not None:
    arguments['logits_matmul_dtype'] = logits_matmul_dtype
  return network.T5Config(**arguments)


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


def time_steps(compiled, state, batch, rng, steps: int, warmup: int):
  """Runs `warmup` + `steps` synced steps, then `PIPELINED_ROUNDS` rounds of `steps` steps.

  Returns (state, metrics, synced step times, per-step times of the pipelined rounds).
  """
  import jax  # pylint: disable=g-import-not-at-top
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
  return state, metrics, synced, times


def profile_steps(compiled, state, batch, rng, profile_dir: str) -> dict:
  """Traces two more steps into `profile_dir`; their device time by kernel, kind of kernel and
  model part (`trace.summarize`)."""
  import jax  # pylint: disable=g-import-not-at-top
  with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
    for _ in range(2):
      state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
  return trace.summarize(profile_dir, steps=2, hlo_text=compiled.as_text())


def build_step(cfg, attention_execution: str, batch_size: int, inputs_length: int,
               targets_length: int, pack: bool, seed: int, init_on_host: bool, row: dict,
               model_parallelism: int = 1):
  """The jitted train step of a new model and train state, a batch, and the step's model FLOPs.

  Writes `init_s` and the model FLOPs into `row`; returns (step, state, batch, rng).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from synth_jax import network  # pylint: disable=g-import-not-at-top
  from synth_jax import optimizer as optimizer_lib  # pylint: disable=g-import-not-at-top
  from synth_jax import partitioning  # pylint: disable=g-import-not-at-top
  from synth_jax import train_state  # pylint: disable=g-import-not-at-top

  def make_optimizer(plan):
    return optimizer_lib.adafactor(optimizer_lib.rsqrt_schedule(), plan)

  start = time.perf_counter()
  model = network.Transformer(cfg, attention_execution=attention_execution)
  mesh = partitioning.create_mesh(model_parallelism=model_parallelism)
  data_sharding = partitioning.data_sharding(mesh)
  batch = batches.synthetic_batch(batch_size, inputs_length, targets_length, cfg.vocab_size,
                                  pack, seed)
  state, shardings, optimizer = create_state(model, make_optimizer, batch, mesh, seed,
                                             init_on_host)
  batch, rng = jax.device_put(batch, data_sharding), jax.random.key(seed + 1)
  model_flops = flops_lib.model_flops(model, optimizer, state, batch, rng)
  row.update(model_flops_per_step=model_flops['training'],
             model_flops_forward=model_flops['forward'],
             model_flops_by_part=model_flops['parts'])
  step = jax.jit(functools.partial(train_state.train_step, model, optimizer),
                 in_shardings=(shardings, data_sharding, None),
                 out_shardings=(shardings, None), donate_argnums=(0,))
  row['init_s'] = time.perf_counter() - start
  return step, state, batch, rng


def compile_step(step, state, batch, rng, row: dict):
  """Compiles `step`; writes `compile_s` and the matmul FLOPs of the executed program into `row`.

  `traced_matmul_flops` counts the program the run executes (fast paths included); fused kernels
  are custom calls, whose matmuls it does not see. `overhead_flops_per_step` is its difference
  from the model FLOPs (negative where a kernel hides or saves matmuls).
  """
  start = time.perf_counter()
  traced = step.trace(state, batch, rng)
  compiled = traced.lower().compile()
  row['compile_s'] = time.perf_counter() - start
  row['traced_matmul_flops'] = flops_lib.matmul_flops(traced.jaxpr)['training']
  row['overhead_flops_per_step'] = row['traced_matmul_flops'] - row['model_flops_per_step']
  return compiled


def measure(attention_type: str, preset: str = 'base', batch_size: Optional[int] = None,
            inputs_length: Optional[int] = None, targets_length: Optional[int] = None,
            steps: int = 10, warmup: int = 2, pack: bool = True,
            attention_execution: Optional[str] = None, peak_tflops: Optional[float] = None,
            seed: int = 0, profile_dir: Optional[str] = None, init_on_host: bool = True,
            logits_matmul_dtype: Optional[str] = None, model_parallelism: int = 1) -> dict:
  """Times `steps` training steps of one attention type in this process; returns one row.

  attention_execution: `network.Transformer.attention_execution` of the timed step (None: its
    default).
  profile_dir: also trace two more steps there and add their device time by kernel
    (`row['profile']`, see `trace.summarize`).
  logits_matmul_dtype: the `T5Config` field (None: its default).
  model_parallelism: the mesh's 'model' axis (the batch splits over the other devices).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from synth_jax import network  # pylint: disable=g-import-not-at-top
  attention_execution = attention_execution or network.Transformer.attention_execution
  shapes = PRESETS[preset]
  batch_size = batch_size or shapes['batch_size']
  inputs_length = inputs_length or shapes['inputs_length']
  targets_length = targets_length or shapes['targets_length']
  cfg = model_config(preset, attention_type, inputs_length, targets_length, logits_matmul_dtype)
  devices = jax.devices()
  peak = peak_tflops or flops_lib.peak_tflops_for(devices[0].device_kind)
  tokens = batch_size * (inputs_length + targets_length)
  row = {'attention_type': attention_type, 'attention_execution': attention_execution,
         'batch_size': batch_size, 'inputs_length': inputs_length,
         'targets_length': targets_length, 'tokens_per_step': tokens,
         'device_kind': devices[0].device_kind, 'num_devices': len(devices),
         'peak_tflops_per_device': peak, 'logits_matmul_dtype': cfg.logits_matmul_dtype.name,
         'xla_flags': os.environ.get('XLA_FLAGS', ''), 'model_parallelism': model_parallelism,
         'error': None}
  if batch_size % len(devices):
    raise ValueError(f'--batch_size {batch_size} must be a multiple of the {len(devices)} '
                     f'devices the batch is split over.')
  try:
    step, state, batch, rng = build_step(cfg, attention_execution, batch_size, inputs_length,
                                         targets_length, pack, seed, init_on_host, row,
                                         model_parallelism)
    with device_lock():
      compiled = compile_step(step, state, batch, rng, row)
      state, metrics, synced, times = time_steps(compiled, state, batch, rng, steps, warmup)
      if profile_dir:
        row['profile'] = profile_steps(compiled, state, batch, rng, profile_dir)
    row['loss'] = float(metrics['loss'])
  except Exception as e:  # pylint: disable=broad-except
    # An out-of-memory row is a result (the caller may retry smaller); others are too, with the
    # message, so one broken type does not hide the rest of the table.
    message = f'{type(e).__name__}: {e}'
    if not is_out_of_memory(message):
      traceback.print_exc()
    row.update(error=message.splitlines()[0][:500], out_of_memory=is_out_of_memory(message))
    return row

  record_timings(row, compiled, synced, times, peak, len(devices))
  return row


def record_timings(row: dict, compiled, synced: list, times: list, peak: Optional[float],
                   num_devices: int):
  """Writes the step times, throughput, MFU, XLA's cost and memory analysis and the devices'
  peak memory into `row` (which holds the model FLOPs and tokens per step)."""
  import jax  # pylint: disable=g-import-not-at-top
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  memory = compiled.memory_analysis()
  step_time = statistics.median(times)
  achieved = row['model_flops_per_step'] / step_time
  stats = [d.memory_stats() or {} for d in jax.local_devices()]
  peaks = [s['peak_bytes_in_use'] for s in stats if 'peak_bytes_in_use' in s]
  row.update(
      xla_flops=cost.get('flops'), xla_bytes_accessed=cost.get('bytes accessed'),
      xla_temp_bytes=getattr(memory, 'temp_size_in_bytes', None),
      xla_argument_bytes=getattr(memory, 'argument_size_in_bytes', None),
      step_times_s=times, step_time_s=step_time, steps_per_s=1.0 / step_time,
      synced_step_times_s=synced, synced_step_time_s=statistics.median(synced),
      tokens_per_s=row['tokens_per_step'] / step_time, achieved_tflops=achieved / 1e12,
      mfu=achieved / (peak * 1e12 * num_devices) if peak else None,
      peak_memory_bytes=max(peaks) if peaks else None, out_of_memory=False)
