"""The training loop: seqio data -> sharded jit step -> orbax checkpoints, eval and summaries.

`train()` is what `synth-jax train` runs; gin binds its arguments (T5X macro names in
`gin/runs/*.gin`: MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS).
A run resumes from the latest checkpoint in `model_dir`, including the data position, so a killed
run continues with the same loss sequence. SIGTERM (TPU preemption) saves and exits cleanly.
"""
import functools
import os
import signal
import time
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import numpy as np

from synth_jax import checkpoints
from synth_jax import data as data_lib
from synth_jax import evaluation
from synth_jax import network
from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax import train_state



class NonFiniteLossError(FloatingPointError):
  pass


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, no preemption saves
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Summaries:
  """TensorBoard scalars under `model_dir/{train,eval}` (a no-op without a model_dir)."""

  def __init__(self, model_dir: Optional[str]):
    self._writers = {}
    self._model_dir = model_dir if jax.process_index() == 0 else None

  def write(self, split: str, step: int, scalars: Mapping[str, float]):
    if not self._model_dir:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if split not in self._writers:
      self._writers[split] = tf.summary.create_file_writer(os.path.join(self._model_dir, split))
    with self._writers[split].as_default():
      for name, value in scalars.items():
        tf.summary.scalar(name, value, step=step)
    self._writers[split].flush()


@gin.configurable(module='synth_jax.train')
def adafactor_optimizer(plan, learning_rate: Callable, decay_rate: float = 0.8,
                        clipping_threshold: float = 1.0):
  """The default optimizer: T5X's Adafactor with rule-driven factoring."""
  return optimizer_lib.adafactor(learning_rate, plan, decay_rate=decay_rate,
                                 clipping_threshold=clipping_threshold)


def _to_global(batch, sharding):
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def evaluate(eval_fn, state, batches, sharding) -> dict[str, float]:
  """Token-weighted loss and accuracy over `batches`."""
  sums = None
  for batch in batches:
    out = jax.device_get(eval_fn(state, _to_global(batch, sharding)))
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
  if sums is None:
    raise ValueError('the eval split yielded no batches; lower BATCH_SIZE or eval_steps.')
  weight = max(float(sums['weight_sum']), 1.0)
  return {'loss': float(sums['loss_sum']) / weight, 'accuracy': float(sums['correct_sum']) / weight}


@gin.configurable(module='synth_jax.train', denylist=['on_step'])
def train(*,
          model_dir: Optional[str],
          model: network.Transformer = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
          batch_size: int = gin.REQUIRED,
          train_steps: int = gin.REQUIRED,
          learning_rate: Callable = optimizer_lib.rsqrt_schedule(),
          make_optimizer: Callable = adafactor_optimizer,
          z_loss: float = 1e-4,
          label_smoothing: float = 0.0,
          seed: int = 0,
          model_parallelism: Optional[int] = None,
          pack: bool = True,
          unpack_single_example_rows: bool = True,
          checkpoint_period: int = 1000,
          keep_checkpoints: Optional[int] = 3,
          eval_period: int = 1000,
          eval_steps: int = 20,
          eval_split: str = 'validation',
          log_period: int = 50,
          initial_checkpoint_path: Optional[str] = None,
          infer_examples: int = 0,
          metric_examples: Optional[int] = None,
          eval_only: bool = False,
          on_step: Optional[Callable[[int, dict], None]] = None) -> dict[str, Any]:
  """Trains (or resumes training of) a T5 model; returns the last train and eval metrics.

  Args:
    model_dir: checkpoints, TensorBoard events and `config.gin` go here; None runs without them.
    model: the network, `Transformer(T5Config(...))`; `ATTENTION_TYPE` picks its attention.
    mixture_or_task_name, task_feature_lengths: the seqio data, e.g. {'inputs': 512,
      'targets': 114}; batches come from `seqio.EncDecFeatureConverter(pack=pack)`.
    batch_size: global batch size (split over the mesh's 'data' axis and over hosts).
    train_steps: the step to stop at (a resumed run continues up to it).
    learning_rate: schedule `step -> rate` (T5's rsqrt with 10k warmup by default).
    make_optimizer: `(factor_plan, learning_rate) -> optax transform`.
    unpack_single_example_rows: packed batches whose rows each hold one example train as the
      unpacked batches they equal, on the faster unpacked attention paths
      (`data.unpack_single_example_rows`; nearly every C4 pretraining batch). The step then
      compiles once for each form the data brings, and each form has its own peak memory (at
      T5-base on an H100, random attention's unpacked step peaked 3 GB higher than its packed
      one). Single-host runs only: hosts would have to agree on every batch's form.
    checkpoint_period, keep_checkpoints: save every N steps (and at the end), keep the newest K.
    initial_checkpoint_path: a checkpoint step directory to start a *new* run from (finetuning);
      ignored when `model_dir` already has checkpoints.
    infer_examples: at the end, greedy-decode this many eval examples and print them.
    metric_examples: for tasks with metrics (GLUE, SuperGLUE), each eval also decodes this many
      examples per task (None: the whole eval split) and reports the tasks' official metrics.
    eval_only: evaluate the latest checkpoint in `model_dir` (and decode examples); no training.
    on_step: test hook called with (step, metrics) after each step.
  """
  mesh = partitioning.create_mesh(model_parallelism)
  per_host_batch = batch_size // jax.process_count()
  if batch_size % (jax.process_count() * mesh.shape['data']):
    raise ValueError(f'BATCH_SIZE={batch_size} must be divisible by the data-parallel size '
                     f'{mesh.shape["data"]} (and the host count {jax.process_count()}).')
  dataset = data_lib.Dataset(mixture_or_task_name, task_feature_lengths, per_host_batch,
                             seed=seed, pack=pack)
  example = dataset.example_batch()
  state, shardings, optimizer = train_state.create(
      model, functools.partial(make_optimizer, learning_rate=learning_rate), example, mesh,
      jax.random.key(seed))
  batch_sharding = partitioning.data_sharding(mesh)  # every feature, packed or not
  unpack_single_example_rows = unpack_single_example_rows and pack
  if unpack_single_example_rows and jax.process_count() > 1:
    print('train.unpack_single_example_rows is off: it needs one host (hosts would have to agree '
          'on every batch\'s form).', flush=True)
    unpack_single_example_rows = False

  step_fn = jax.jit(
      functools.partial(train_state.train_step, model, optimizer, z_loss=z_loss,
                        label_smoothing=label_smoothing),
      in_shardings=(shardings, batch_sharding, None),
      out_shardings=(shardings, None), donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(train_state.eval_step, model),
                    in_shardings=(shardings, batch_sharding))

  manager = checkpoints.Manager(model_dir, period=checkpoint_period, keep=keep_checkpoints)
  start = 0
  if manager.latest_step() is not None:
    state = manager.restore(state, shardings)
    start = int(state.step)
    print(f'Resumed from {manager.directory} at step {start}.', flush=True)
  elif eval_only:
    raise checkpoints.CheckpointError(
        f'eval needs a checkpoint, and {manager.directory} has none; train first or set MODEL_DIR.')
  elif initial_checkpoint_path:
    state = checkpoints.load_params_into(state, shardings, initial_checkpoint_path)
    print(f'Initialised parameters from {initial_checkpoint_path}.', flush=True)
  if model_dir and jax.process_index() == 0:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile writes gs:// too)
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(os.path.join(model_dir, 'config.gin'), 'w') as f:
      f.write(gin.config_str())

  summaries = Summaries(model_dir)
  evaluator = None
  if eval_period or eval_only:
    evaluator = evaluation.make_evaluator(mixture_or_task_name, task_feature_lengths, eval_split,
                                          metric_examples)

  def evaluate_all(step):
    results = {}
    if eval_steps:
      results = evaluate(eval_fn, state, dataset.eval_batches(eval_split, eval_steps),
                         batch_sharding)
      summaries.write('eval', step, results)
      print(f'eval  step {step}  loss {results["loss"]:.4f}  acc {results["accuracy"]:.3f}',
            flush=True)
    if evaluator is not None:
      task_metrics = evaluation.run(evaluator, model, state.variables(), per_host_batch,
                                    task_feature_lengths['targets'], step)
      for task, values in task_metrics.items():
        summaries.write(f'eval_{task}', step, values)
        print(f'eval  step {step}  {task}  ' +
              '  '.join(f'{k} {v:.4f}' for k, v in sorted(values.items())), flush=True)
      results = {**results, 'tasks': task_metrics}
    return results

  rng = jax.random.key(seed + 1)
  batches = dataset.train_batches(start_step=start)
  tokens_per_step = batch_size * sum(task_feature_lengths.values())
  metrics, eval_metrics = {}, {}
  last_log_step, last_log_time = start, time.time()
  if eval_only:
    eval_metrics = evaluate_all(start)
    train_steps = start  # skip the loop
  # Steps are dispatched without waiting for the device: their metrics stay on it until the
  # host needs them (to log, evaluate, save, stop or call `on_step`). Every loss is checked
  # before any checkpoint is written, so a NaN never reaches one.
  pending = []
  forms_seen = set()  # 'packed' / 'unpacked': each compiles the step once

  def read_pending():
    nonlocal metrics
    if not pending:
      return
    for done_step, values in jax.device_get(pending):
      metrics = {k: float(v) for k, v in values.items()}
      if not (np.isfinite(metrics['loss']) and np.isfinite(metrics.get('grad_norm', 0.0))):
        manager.wait()
        raise NonFiniteLossError(
            f'loss is {metrics["loss"]} (gradient norm {metrics.get("grad_norm")}) at step '
            f'{done_step}; stopping. The last good checkpoint '
            f'(step {manager.latest_step()}) is kept in {manager.directory}. Lower the learning '
            'rate or check the data, then rerun to resume from it.')
      if on_step is not None:
        on_step(done_step, metrics)
    pending.clear()

  with _Preemption() as preemption:
    for step in range(start + 1, train_steps + 1):
      batch = next(batches)
      if step == start + 1 and (note := network.packed_slots_note(model.config, batch)):
        print(note, flush=True)
      if unpack_single_example_rows:
        batch = data_lib.unpack_single_example_rows(batch)
        form = 'packed' if 'encoder_segment_ids' in batch else 'unpacked'
        if forms_seen and form not in forms_seen:
          print(f'step {step}: the first {form} batch of this run; compiling the step for it '
                '(once).', flush=True)
        forms_seen.add(form)
      state, step_metrics = step_fn(state, _to_global(batch, batch_sharding), rng)
      pending.append((step, step_metrics))
      log_now = step % log_period == 0 or step == train_steps
      eval_now = eval_period and (step % eval_period == 0 or step == train_steps)
      save_now = manager.is_due(step) or step == train_steps or preemption.requested
      if on_step is not None or log_now or eval_now or save_now:
        read_pending()
      if log_now:
        now = time.time()
        step_time = (now - last_log_time) / (step - last_log_step)
        last_log_step, last_log_time = step, now
        scalars = {**metrics, 'step_time_s': step_time,
                   'tokens_per_s': tokens_per_step / step_time,
                   'learning_rate': float(learning_rate(step - 1))}
        summaries.write('train', step, scalars)
        print(f'step {step}/{train_steps}  loss {metrics["loss"]:.4f}  '
              f'acc {metrics["accuracy"]:.3f}  {tokens_per_step / step_time:,.0f} tok/s  '
              f'{step_time * 1000:.0f} ms/step', flush=True)
      if eval_now:
        eval_metrics = evaluate_all(step)
      preempted = preemption.requested  # read once, and any SIGTERM so far has its losses read
      if preempted:
        read_pending()
      manager.maybe_save(step, state, force=(step == train_steps or preempted))
      if preempted:
        print(f'SIGTERM: saved step {step} to {manager.directory}; exiting.', flush=True)
        break
  manager.wait()
  result = {'train': metrics, 'eval': eval_metrics, 'step': int(state.step), 'state': state}
  if infer_examples:
    from synth_jax import decoding  # pylint: disable=g-import-not-at-top
    result['examples'] = decoding.print_examples(
        model, state.variables(), dataset, eval_split, infer_examples)
  return result
