"""The training loop: seqio data -> sharded jit step -> orbax checkpoints, eval and summaries.

`train()` is what `synth-jax train` runs; gin binds its arguments (T5X macro names in
`gin/runs/*.gin`: MODEL_DIR, TRAIN_STEPS, BATCH_SIZE, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS).
`evaluate()` and `infer()` (`synth-jax eval`, `infer`) share its setup, read a checkpoint's
variables only (no optimizer state) and take the arguments of the same names that gin binds to
`train` (`gin_flags.train_bindings_for`), so a run is described once.
A run resumes from the latest checkpoint in `model_dir`, including the data position, so a killed
run continues with the same loss sequence; an unreadable one is set aside (`checkpoints`). SIGTERM
(TPU preemption) saves the next step and exits at once, evaluating and decoding nothing.
"""
import contextlib
import dataclasses
import functools
import io
import os
import signal
import time
from typing import Any, Callable, Mapping, Optional

import gin
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax import checkpoints
from synth_jax import data as data_lib
from synth_jax import decoding
from synth_jax import evaluation
from synth_jax import lease as lease_lib
from synth_jax import multihost
from synth_jax import network
from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax import progress
from synth_jax import run_config
from synth_jax import train_state
from synth_jax.attention import core


class NonFiniteLossError(FloatingPointError):
  pass


ModelDirError = run_config.ModelDirError  # MODEL_DIR cannot hold a run (a file, not writable)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps.

  On several processes jax's preemption service has the signal (`multihost`): `agree(step)`,
  called at every step, sets the flag on every process at the same step, so all save that one.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._several = jax.process_count() > 1

  def agree(self, step: int):
    """Sets the flag at the step every process stops at (several processes only)."""
    if self._several and not self.requested:
      self.requested = multihost.reached_preemption_step(step)

  def __enter__(self):
    if self._several:  # a handler here would take the signal from jax's service
      return self
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


@gin.configurable(module='synth_jax.train')
def adafactor_optimizer(plan, learning_rate: Callable, decay_rate: float = 0.8,
                        clipping_threshold: float = 1.0):
  """The default optimizer: T5X's Adafactor with rule-driven factoring."""
  return optimizer_lib.adafactor(learning_rate, plan, decay_rate=decay_rate,
                                 clipping_threshold=clipping_threshold)


@contextlib.contextmanager
def _process_0_reports():
  """Output inside goes to process 0's stdout only: evaluation and decoding, which every process
  runs on the same global arrays, report once."""
  if jax.process_index() == 0:
    yield
    return
  with contextlib.redirect_stdout(io.StringIO()):
    yield


def _print_examples(model, variables, dataset: data_lib.Dataset, split: str, count: int):
  """`decoding.print_examples`, printed by process 0 only."""
  with _process_0_reports():
    return decoding.print_examples(model, variables, dataset, split, count)


def _to_global(batch, sharding):
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def _eval_metrics(eval_fn, state, batches, sharding) -> dict[str, float]:
  """Token-weighted loss and accuracy over `batches`."""
  sums = None
  for batch in batches:
    out = jax.device_get(eval_fn(state, _to_global(batch, sharding)))
    sums = out if sums is None else {k: sums[k] + out[k] for k in sums}
  if sums is None:
    raise ValueError('the eval split yielded no batches; lower BATCH_SIZE or eval_steps.')
  weight = max(float(sums['weight_sum']), 1.0)
  return {'loss': float(sums['loss_sum']) / weight, 'accuracy': float(sums['correct_sum']) / weight}


class _StepMetrics:
  """Step metrics left on the device until the host needs them; every loss is checked when read.

  Steps are dispatched one ahead of the device (`add`): their metrics stay on it until the host
  needs them (to log, evaluate, save, stop or call `on_step`). The loop reads them before every
  checkpoint, so a NaN never reaches one.
  """

  def __init__(self, manager: checkpoints.Manager, on_step: Optional[Callable[[int, dict], None]]):
    self.latest = {}
    self.on_step = on_step
    self._manager = manager
    self._pending = []

  def add(self, step: int, metrics: Mapping[str, jax.Array]):
    """Keeps `step`'s metrics and waits (copying nothing) until the step before it is done.

    So the host queues at most one step behind the one the device runs, which keeps the device
    busy while bounding what a SIGTERM must wait for: unbounded, the host ran ~25 steps ahead
    (XLA:CPU queues up to 32 computations) and a preempted run saved that many steps late.
    """
    self._pending.append((step, metrics))
    if len(self._pending) > 1:
      jax.block_until_ready(self._pending[-2][1])

  def read(self) -> dict[str, float]:
    """The newest step's metrics, after checking (and passing to `on_step`) every pending one."""
    if not self._pending:
      return self.latest
    # Done on every device: a replicated array's copy reads one replica, and the others may be
    # behind it (the 4 CPU devices of the tests; on a TPU a core that lags).
    jax.block_until_ready(self._pending)
    for step, values in jax.device_get(self._pending):
      self.latest = {k: float(v) for k, v in values.items()}
      if not (np.isfinite(self.latest['loss']) and
              np.isfinite(self.latest.get('grad_norm', 0.0))):
        self._manager.wait()
        raise NonFiniteLossError(
            f'loss is {self.latest["loss"]} (gradient norm {self.latest.get("grad_norm")}) at '
            f'step {step}; stopping. The last good checkpoint (step '
            f'{self._manager.latest_step()}) is kept in {self._manager.directory}. Lower the '
            'learning rate or check the data, then rerun to resume from it.')
      if self.on_step is not None:
        self.on_step(step, self.latest)
    self._pending.clear()
    return self.latest


@dataclasses.dataclass
class _Evaluation:
  """Called with (state, step): eval loss and accuracy over `steps` batches of `split` and, with a
  `task_evaluator`, the tasks' official metrics on decoded examples; printed and summarised."""
  model: network.Transformer
  dataset: data_lib.Dataset
  eval_fn: Callable
  batch_sharding: jax.sharding.Sharding
  summaries: progress.Summaries
  split: str
  steps: int
  task_evaluator: Any  # seqio.Evaluator or None

  @classmethod
  def create(cls, model, dataset: data_lib.Dataset, eval_fn, batch_sharding, summaries,
             split: str, steps: int, with_task_metrics: bool, metric_examples: Optional[int]):
    """With `with_task_metrics`, an Evaluator over the dataset's tasks that have metrics."""
    task_evaluator = None
    if with_task_metrics:
      task_evaluator = evaluation.make_evaluator(dataset.name, dataset.lengths, split,
                                                 metric_examples)
    return cls(model, dataset, eval_fn, batch_sharding, summaries, split, steps, task_evaluator)

  def __call__(self, state: train_state.TrainState, step: int) -> dict[str, Any]:
    with _process_0_reports():
      return self._evaluate(state, step)

  def _evaluate(self, state: train_state.TrainState, step: int) -> dict[str, Any]:
    results = {}
    begin = time.perf_counter()
    if self.steps:
      results = _eval_metrics(self.eval_fn, state,
                              self.dataset.eval_batches(self.split, self.steps),
                         self.batch_sharding)
      self.summaries.write('eval', step, results)
      print(f'eval  step {step}  loss {results["loss"]:.4f}  acc {results["accuracy"]:.3f}  '
            f'({time.perf_counter() - begin:.1f} s)', flush=True)
    if self.task_evaluator is not None:
      task_metrics = evaluation.run(  # every process decodes every example
          self.task_evaluator, self.model, state.variables(), self.dataset.global_batch_size,
          self.dataset.lengths['targets'], step)
      for task, values in task_metrics.items():
        self.summaries.write(f'eval_{task}', step, values)
        print(f'eval  step {step}  {task}  ' +
              '  '.join(f'{k} {v:.4f}' for k, v in sorted(values.items())), flush=True)
      results = {**results, 'tasks': task_metrics}
    return results


def _jit_train_step(model, optimizer, shardings, batch_sharding, **loss_options):
  """The train step `(state, batch, rng) -> (state, metrics)`, for the mesh."""
  return jax.jit(functools.partial(train_state.train_step, model, optimizer, **loss_options),
                 in_shardings=(shardings, batch_sharding, None),
                 out_shardings=(shardings, None), donate_argnums=(0,))


def _jit_eval_step(model, shardings, batch_sharding):
  """The eval step `(state, batch) -> sums` (`train_state.eval_step`), for the mesh."""
  return jax.jit(functools.partial(train_state.eval_step, model),
                 in_shardings=(shardings, batch_sharding))


def _restore(manager: checkpoints.Manager, state, shardings,
             initial_checkpoint_path: Optional[str], strict: bool = False):
  """`(state, first step)`: resumed from `manager`'s newest readable checkpoint (with `strict`:
  the newest, or an error), else fresh (or finetuning from `initial_checkpoint_path`)."""
  if manager.latest_step() is not None:
    restored = manager.restore(state, shardings, strict=strict)
    if restored is not None:
      print(f'Resumed from {manager.directory} at step {int(restored.step)}.', flush=True)
      return restored, int(restored.step)
  if initial_checkpoint_path:
    state = checkpoints.load_params_into(state, shardings, initial_checkpoint_path)
    print(f'Initialised parameters from {initial_checkpoint_path}.', flush=True)
  return state, 0


def _run_steps(state, start: int, train_steps: int, dataset: data_lib.Dataset, *, step_fn,
               batch_sharding, rng, manager: checkpoints.Manager, metrics: _StepMetrics,
               log: Callable[[], progress.TrainProgress], evaluate_all: _Evaluation,
               eval_period: int, preemption: _Preemption,
               trainer_lease: Optional[lease_lib.Lease] = None):
  """Steps `start + 1 .. train_steps` on `dataset`'s batches, logging (`log()` makes the
  progress log), evaluating and saving when due; SIGTERM (seen by `preemption`, also when it
  came before the first step) saves the step under way and stops, evaluating nothing. Returns
  the state and the last eval metrics."""
  eval_metrics = {}
  if start >= train_steps:
    print(f'{manager.directory and os.path.dirname(manager.directory)} is already at step '
          f'{start} of TRAIN_STEPS={train_steps}: nothing to train. Raise TRAIN_STEPS to '
          'continue training.', flush=True)
    return state, eval_metrics
  batches, log = dataset.train_batches(start_step=start), log()
  for step in range(start + 1, train_steps + 1):
    state, step_metrics = step_fn(state, _to_global(next(batches), batch_sharding), rng)
    metrics.add(step, step_metrics)  # returns once the step before is done
    preemption.agree(step)
    log_now = log.is_due(step)
    eval_now = eval_period and (step % eval_period == 0 or step == train_steps)
    save_now = manager.is_due(step) or step == train_steps or preemption.requested
    first = step == start + 1
    if first or metrics.on_step is not None or log_now or eval_now or save_now:
      metrics.read()
    if first:
      log.first_step_done(step)
    if log_now:
      log.write(step, metrics.latest)
    if eval_now and not preemption.requested:  # preempted: save this step at once instead
      with log.paused():
        eval_metrics = evaluate_all(state, step)
    preempted = preemption.requested  # read once, and any SIGTERM so far has its losses read
    if preempted:
      metrics.read()
    if save_now or preempted:
      begin = time.perf_counter()
      with log.paused():
        if trainer_lease is not None:
          trainer_lease.check()  # another trainer took MODEL_DIR over: keep its saves
        saved = manager.maybe_save(step, state, force=(step == train_steps or preempted))
      if saved:  # the device-to-host copy; writing to disk continues in the background
        print(f'saved step {step} ({time.perf_counter() - begin:.1f} s)', flush=True)
    if preempted:
      print(f'SIGTERM: saved step {step} to {manager.directory}; exiting.', flush=True)
      break
  return state, eval_metrics


def _check_before_claiming(model_dir: Optional[str], model,
                           task_feature_lengths: Mapping[str, int],
                           initial_checkpoint_path: Optional[str]):
  """Refuses, before MODEL_DIR is touched, a MODEL_DIR that cannot hold a run, a fresh run's
  missing INITIAL_CHECKPOINT_PATH, and lengths the model cannot take (a synthesizer's maximum):
  its initialisation is traced at the run's lengths, abstractly (nothing computed)."""
  run_config.check_model_dir(model_dir)
  missing = run_config.missing_initial_checkpoint_message(initial_checkpoint_path, model_dir)
  if missing:
    raise checkpoints.CheckpointError(missing)
  ones = lambda name: jnp.ones((1, task_feature_lengths[name]), jnp.int32)
  jax.eval_shape(lambda: model.init(
      jax.random.key(0), encoder_input_tokens=ones('inputs'), decoder_input_tokens=ones('targets'),
      decoder_target_tokens=ones('targets'), enable_dropout=False))


def _claim_model_dir(scope: contextlib.ExitStack, model_dir: Optional[str], model,
                     lease_timeout_s: float, checkpoint_period: int,
                     keep_checkpoints: Optional[int]):
  """`(preemption, lease, checkpoint manager)` of a training run, entered into `scope`; a resume
  of another model is refused here, before anything is built."""
  # SIGTERM from here on is a preemption (saved at the next step, the lease then released), not
  # a kill that leaves the lease behind.
  preemption = scope.enter_context(_Preemption())
  trainer_lease = None
  if model_dir:  # every host takes part; process 0 holds the file
    trainer_lease = scope.enter_context(lease_lib.Lease(model_dir, timeout_s=lease_timeout_s))
  manager = scope.enter_context(
      checkpoints.Manager(model_dir, period=checkpoint_period, keep=keep_checkpoints))
  if manager.latest_step() is not None:
    run_config.check_same_model(model_dir, model, 'resume')
  return preemption, trainer_lease, manager


def _save_config(model_dir: Optional[str], model):
  """Process 0 writes the run's gin config and model summary into `model_dir` (`run_config`)."""
  if model_dir and jax.process_index() == 0:
    run_config.write(model_dir, gin.config_str(), model)


def _mesh_and_data(model_parallelism: Optional[int], mixture_or_task_name: str,
                   task_feature_lengths: Mapping[str, int], batch_size: int, seed: int,
                   pack: bool, unpack_single_example_rows: bool = True):
  """The setup train, evaluate and infer share: the device mesh and the run's seqio data (this
  process's rows of each global batch)."""
  mesh = partitioning.create_mesh(model_parallelism)
  dataset = data_lib.Dataset(mixture_or_task_name, task_feature_lengths, batch_size, seed=seed,
                             pack=pack, unpack_single_example_rows=unpack_single_example_rows,
                             rows=partitioning.process_rows(mesh, batch_size))
  return mesh, dataset


def _checkpoint_state(model, model_dir: Optional[str], dataset: data_lib.Dataset, mesh,
                      command: str, strict_restore: bool = False):
  """`(state, its shardings)` holding the newest readable checkpoint's variables (no optimizer
  state; `strict_restore`: the newest, or an error), for evaluation and inference; the run must
  be of `model`."""
  if not model_dir:
    raise checkpoints.CheckpointError(
        f'{command} reads a checkpoint: set MODEL_DIR (--gin.MODEL_DIR="\'/path/to/run\'").')
  run_config.check_model_dir(model_dir)
  if run_config.has_checkpoint(model_dir):
    run_config.check_same_model(model_dir, model, 'evaluate')
  abstract = train_state.abstract_variables(model, dataset.example_batch(), mesh)
  variables, step = checkpoints.read_variables(model_dir, abstract, command=command,
                                               strict=strict_restore)
  print(f"Loaded {os.path.join(model_dir, 'checkpoints')} at step {step}.", flush=True)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = train_state.TrainState(step=step, params=variables['params'],
                                 frozen=variables.get(core.FROZEN, {}), opt_state=None)
  shardings = train_state.TrainState(
      step=replicated, params=jax.tree.map(lambda a: a.sharding, abstract['params']),
      frozen=jax.tree.map(lambda a: a.sharding, abstract.get(core.FROZEN, {})), opt_state=None)
  return state, shardings


@gin.configurable(module='synth_jax.train', denylist=['on_step'])
def train(*, model_dir: Optional[str], model: network.Transformer = gin.REQUIRED,
          mixture_or_task_name: str = gin.REQUIRED,
          task_feature_lengths: Mapping[str, int] = gin.REQUIRED, batch_size: int = gin.REQUIRED,
          train_steps: int = gin.REQUIRED, learning_rate: Callable = optimizer_lib.rsqrt_schedule(),
          make_optimizer: Callable = adafactor_optimizer, z_loss: float = 1e-4,
          label_smoothing: float = 0.0, seed: int = 0, model_parallelism: Optional[int] = None,
          pack: bool = True, unpack_single_example_rows: bool = True,
          checkpoint_period: int = 1000, keep_checkpoints: Optional[int] = 3,
          eval_period: int = 1000, eval_steps: int = 20, eval_split: str = 'validation',
          log_period: int = 50, initial_checkpoint_path: Optional[str] = None,
          infer_examples: int = 0, metric_examples: Optional[int] = None,
          lease_timeout_s: float = 300.0, strict_restore: bool = False,
          on_step: Optional[Callable[[int, dict], None]] = None) -> dict[str, Any]:
  """Trains (or resumes training of) a T5 model; returns the last train and eval metrics.

  `model_dir` gets checkpoints, TensorBoard events, `config.gin` (None: none); `model` is
  `Transformer(T5Config(...))`; the data is `mixture_or_task_name` at `task_feature_lengths`
  (`seqio.EncDecFeatureConverter(pack=pack)`) in global batches of `batch_size`; training stops
  at step `train_steps`. `learning_rate`: a schedule `step -> rate`; `make_optimizer(plan,
  learning_rate)`: an optax transform; `unpack_single_example_rows`: packed batches of one
  example a row train unpacked (`data.Dataset`). Saves every `checkpoint_period`
  steps and at the end, keeping `keep_checkpoints`; evaluates every `eval_period` steps on
  `eval_steps` batches of `eval_split`, plus official metrics on `metric_examples` decoded
  examples (None: all); `initial_checkpoint_path`: a step directory a new run starts from;
  `infer_examples` are decoded at the end (not after SIGTERM); `strict_restore`: refuse an
  unreadable checkpoint (else set aside); `lease_timeout_s`: when a lease is stale; `on_step`.
  """
  _check_before_claiming(model_dir, model, task_feature_lengths, initial_checkpoint_path)
  with contextlib.ExitStack() as scope:
    preemption, trainer_lease, manager = _claim_model_dir(
        scope, model_dir, model, lease_timeout_s, checkpoint_period, keep_checkpoints)
    mesh, dataset = _mesh_and_data(model_parallelism, mixture_or_task_name, task_feature_lengths,
                                   batch_size, seed, pack, unpack_single_example_rows)
    state, shardings, optimizer = train_state.create(
        model, functools.partial(make_optimizer, learning_rate=learning_rate),
        dataset.example_batch(), mesh, jax.random.key(seed))
    batch_sharding = partitioning.data_sharding(mesh)  # every feature, packed or not
    state, start = _restore(manager, state, shardings, initial_checkpoint_path, strict_restore)
    _save_config(model_dir, model)
    summaries = progress.Summaries(model_dir)
    evaluate_all = _Evaluation.create(
        model, dataset, _jit_eval_step(model, shardings, batch_sharding), batch_sharding,
        summaries, eval_split, eval_steps, bool(eval_period), metric_examples)
    metrics = _StepMetrics(manager, on_step)
    state, eval_metrics = _run_steps(
        state, start, train_steps, dataset, step_fn=_jit_train_step(
            model, optimizer, shardings, batch_sharding, z_loss=z_loss,
            label_smoothing=label_smoothing), batch_sharding=batch_sharding,
        rng=jax.random.key(seed + 1), manager=manager, metrics=metrics,
        log=lambda: progress.TrainProgress(
            summaries, log_period, train_steps, start, learning_rate=learning_rate,
            tokens_per_step=batch_size * sum(task_feature_lengths.values())),
        evaluate_all=evaluate_all, eval_period=eval_period, preemption=preemption,
        trainer_lease=trainer_lease)
    manager.wait()
    result = dict(train=metrics.latest, eval=eval_metrics, step=int(state.step), state=state)
    if infer_examples and not preemption.requested:  # preempted: exit at once
      result['examples'] = _print_examples(model, state.variables(), dataset, eval_split,
                                           infer_examples)
    return result


def evaluate(*, model_dir: Optional[str], model: network.Transformer,
             mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
             batch_size: int, seed: int = 0, model_parallelism: Optional[int] = None,
             pack: bool = True, eval_steps: int = 20, eval_split: str = 'validation',
             metric_examples: Optional[int] = None, strict_restore: bool = False
             ) -> dict[str, Any]:
  """`synth-jax eval`: loss and accuracy of the newest checkpoint in `model_dir` over
  `eval_steps` batches of `eval_split`, and the tasks' official metrics where they have them.

  The arguments mean what `train`'s of the same name mean; `synth-jax eval` reads them from the
  gin that binds `train` (the run's saved config.gin). Returns `{'eval': metrics, 'step'}`.
  """
  mesh, dataset = _mesh_and_data(model_parallelism, mixture_or_task_name, task_feature_lengths,
                                 batch_size, seed, pack)
  state, shardings = _checkpoint_state(model, model_dir, dataset, mesh, 'eval', strict_restore)
  batch_sharding = partitioning.data_sharding(mesh)
  evaluate_all = _Evaluation.create(
      model, dataset, _jit_eval_step(model, shardings, batch_sharding), batch_sharding,
      progress.Summaries(model_dir), eval_split, eval_steps, True, metric_examples)
  return {'eval': evaluate_all(state, state.step), 'step': state.step}


def infer(*, model_dir: Optional[str], model: network.Transformer, mixture_or_task_name: str,
          task_feature_lengths: Mapping[str, int], batch_size: int, seed: int = 0,
          model_parallelism: Optional[int] = None, eval_split: str = 'validation',
          examples: int = 8, strict_restore: bool = False) -> dict[str, Any]:
  """`synth-jax infer`: greedy-decodes `examples` examples of `eval_split` with the latest
  checkpoint in `model_dir` and prints them; returns `{'examples': [(input, target,
  prediction)], 'step'}`. Arguments as `evaluate`'s."""
  mesh, dataset = _mesh_and_data(model_parallelism, mixture_or_task_name, task_feature_lengths,
                                 batch_size, seed, pack=False)
  state, _ = _checkpoint_state(model, model_dir, dataset, mesh, 'infer', strict_restore)
  rows = _print_examples(model, state.variables(), dataset, eval_split, examples)
  return {'examples': rows, 'step': state.step}
