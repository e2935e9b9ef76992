"""The diagnostics training loop: equal budgets, on-device data, learning curves.

Every variant trained with one `TrainConfig` and seed sees the same batches in the same order
(batch i is the task's generator at `fold_in(data stream, i)`) and is evaluated on the same
held-out examples (another stream of the seed). Steps run in jitted chunks of `eval_every`
(`lax.scan`, the batches generated inside), so the host only logs between chunks.

Recorded per run: the learning curve (held-out answer accuracy every `eval_every` steps), the
final accuracy, the steps to 90% accuracy (None if never reached), and per-step training loss
and gradient norms before clipping (global, and per top-level module: `layers_0`, ...).
"""
import dataclasses
import time
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from synth_jax import progress
from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import statistics
from synth_jax.diagnostics import tasks as tasks_lib

TARGET_ACCURACY = 0.9
DATA_STREAM, EVAL_STREAM, INIT_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training budget, shared by every variant of a comparison.

  Attributes:
    steps: optimizer steps (a multiple of `eval_every`).
    batch_size: examples per step.
    learning_rate: AdamW's peak rate, reached after `warmup_steps` of linear warmup, then cosine
      decay to a tenth of it.
    weight_decay: AdamW's decoupled weight decay.
    clip_norm: gradients are clipped to this global norm.
    eval_every: steps between held-out evaluations (the curve's resolution).
    eval_examples: held-out examples per evaluation (a multiple of `batch_size`).
  """
  steps: int = 400
  batch_size: int = 32
  learning_rate: float = 1e-3
  warmup_steps: int = 50
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  eval_every: int = 50
  eval_examples: int = 256

  def __post_init__(self):
    if self.steps % self.eval_every:
      raise ValueError(f'steps={self.steps} must be a multiple of eval_every={self.eval_every}.')
    if self.eval_examples % self.batch_size:
      raise ValueError(f'eval_examples={self.eval_examples} must be a multiple of '
                       f'batch_size={self.batch_size}.')
    if self.warmup_steps >= self.steps:
      raise ValueError(f'steps={self.steps} leaves no decay after warmup_steps='
                       f'{self.warmup_steps}: give more --steps than the warmup.')


def stream(seed, which: int) -> jax.Array:
  """Random stream `which` (DATA_STREAM, EVAL_STREAM, INIT_STREAM) of a seed: `seed` is an int or
  its root key `jax.random.key(seed)` (how a compiled chunk receives it, as an argument)."""
  is_key = jnp.issubdtype(getattr(seed, 'dtype', None), jax.dtypes.prng_key)
  return jax.random.fold_in(seed if is_key else jax.random.key(seed), which)


def optimizer(cfg: TrainConfig, learning_rate=None) -> optax.GradientTransformation:
  """AdamW on `cfg`'s schedule, peaking at `learning_rate` (default `cfg.learning_rate`).

  The rate may be a traced scalar (`training_chunk` passes it so).
  """
  peak = cfg.learning_rate if learning_rate is None else learning_rate
  unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, cfg.warmup_steps, cfg.steps, 0.1)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                     optax.adamw(lambda count: peak * unit(count), b2=0.98,
                                 weight_decay=cfg.weight_decay))


def answer_metrics(logits: jax.Array, batch: tasks_lib.Batch) -> tuple[jax.Array, jax.Array]:
  """(mean cross-entropy, accuracy) over the answers (`loss_mask`) of a batch; logits
  `[batch, n, vocab]` at the batch's `answer_positions` (`answer_logits`)."""
  targets, mask = at_answers(batch, 'targets'), at_answers(batch, 'loss_mask')
  correct, count = _correct(logits, targets, mask)
  count = jnp.maximum(count, 1.0)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return jnp.sum(loss * mask) / count, correct / count


def correct_answers(logits: jax.Array, batch: tasks_lib.Batch) -> tuple[jax.Array, jax.Array]:
  """(answers predicted right, answers) of a batch; logits as `answer_metrics` takes them."""
  return _correct(logits, at_answers(batch, 'targets'), at_answers(batch, 'loss_mask'))


def _correct(logits, targets, mask) -> tuple[jax.Array, jax.Array]:
  return jnp.sum((jnp.argmax(logits, axis=-1) == targets) * mask), jnp.sum(mask)


def at_answers(batch: tasks_lib.Batch, key: str) -> jax.Array:
  """`batch[key]` `[batch, length]` at the batch's `answer_positions`: `[batch, n]`."""
  return jnp.take_along_axis(batch[key], batch['answer_positions'], axis=1)


def answer_logits(model: model_lib.DecoderLM, variables, batch: tasks_lib.Batch) -> jax.Array:
  """The model's logits `[batch, n, vocab]` at the batch's answer positions alone."""
  return model.apply(variables, batch['inputs'], batch['answer_positions'])


def first_step_at(steps: Sequence[int], accuracies: Sequence[float],
                  target: float = TARGET_ACCURACY) -> Optional[int]:
  """The first evaluated step whose accuracy is at least `target`; None if none is."""
  return next((s for s, a in zip(steps, accuracies) if a >= target), None)


def held_out_accuracy(model: model_lib.DecoderLM, variables, task: tasks_lib.Task, seed,
                      cfg: TrainConfig, length: int) -> jax.Array:
  """Answer accuracy on the `eval_examples` held-out examples at `length` (traceable; `seed` as
  in `stream`)."""
  def one(index):
    batch = task.generate(jax.random.fold_in(stream(seed, EVAL_STREAM), index), cfg.batch_size,
                          length)
    return correct_answers(answer_logits(model, variables, batch), batch)
  correct, total = jax.lax.map(one, jnp.arange(cfg.eval_examples // cfg.batch_size))
  return jnp.sum(correct) / jnp.maximum(jnp.sum(total), 1.0)


def held_out_accuracy_at(model: model_lib.DecoderLM, variables, task: tasks_lib.Task, seed: int,
                         cfg: TrainConfig, length: int) -> float:
  """`held_out_accuracy` as a number; raises the model's ValueError if it cannot take `length`."""
  return float(jax.jit(lambda v: held_out_accuracy(model, v, task, seed, cfg, length))(variables))


def trace_values(values) -> list[float]:
  """Per-step traces at 5 significant digits: enough for curves and spike heights, and a sweep's
  results.json a third of the size."""
  return [float(f'{float(x):.5g}') for x in values]


def _chunk_function(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig):
  """`chunk(params, fixed, opt_state, start, root_key, rate)`, unjitted: `eval_every` steps from
  step `start`, then the held-out accuracy; returns `(params, opt_state, loss [eval_every],
  gradient norms, accuracy)`."""
  def chunk(params, fixed, opt_state, start, root_key, learning_rate):
    tx = optimizer(cfg, learning_rate)
    data_key = stream(root_key, DATA_STREAM)

    def step(carry, index):
      params, opt_state = carry
      batch = task.generate(jax.random.fold_in(data_key, index), cfg.batch_size)
      def loss_fn(p):
        return answer_metrics(answer_logits(model, {'params': p, **fixed}, batch), batch)[0]
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (
          loss, statistics.gradient_norms(grads))

    (params, opt_state), (loss, norm) = jax.lax.scan(step, (params, opt_state),
                                                     start + jnp.arange(cfg.eval_every))
    acc = held_out_accuracy(model, {'params': params, **fixed}, task, root_key, cfg,
                            task.length)
    return params, opt_state, loss, norm, acc
  return chunk


def training_chunk(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig):
  """The compiled unit of training: `chunk(params, fixed, opt_state, start, root_key, rate)` runs
  `eval_every` steps from step `start`, then the held-out accuracy; returns `(params, opt_state,
  loss [eval_every], gradient norms, accuracy)`.

  The seed's root key, the peak rate and the frozen collections (`fixed`, drawn from the seed)
  are arguments, not constants, so runs that differ only in seed or rate lower to one program,
  which JAX's persistent compilation cache then serves to every such run.
  """
  return jax.jit(_chunk_function(model, task, cfg))


def group_chunk(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig):
  """`training_chunk` of a group of runs as one program (`jax.vmap`): every argument and result
  but `start` has a leading `[runs]` axis (per run: parameters, optimizer state, root key, peak
  rate; hence its own data stream and held-out examples)."""
  return jax.jit(jax.vmap(_chunk_function(model, task, cfg), in_axes=(0, 0, 0, None, 0, 0)))


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a group: its seed (data, held-out examples, initialisation) and peak rate."""
  seed: int
  learning_rate: float


class _Curves:
  """The per-run record of a group, filled one chunk at a time."""

  def __init__(self, runs: int, chance: float):
    self.runs, self.chance, self.steps = runs, chance, []
    self.accuracy, self.loss, self.norm = ([[] for _ in range(runs)] for _ in range(3))
    self.modules = [{} for _ in range(runs)]

  def add(self, step: int, loss, norm, acc):
    """Chunk results with a leading `[runs]` axis: loss `[runs, eval_every]`, acc `[runs]`."""
    self.steps.append(step)
    loss, acc = np.asarray(loss), np.asarray(acc)
    norm = jax.tree.map(np.asarray, norm)
    for i in range(self.runs):
      self.accuracy[i].append(float(acc[i]))
      self.loss[i] += trace_values(loss[i])
      self.norm[i] += trace_values(norm['global'][i])
      for name, trace in norm['modules'].items():  # a peak per chunk: spikes, at a 20th the size
        self.modules[i].setdefault(name, []).extend(trace_values([np.max(trace[i])]))

  def records(self, seconds: float) -> list[dict]:
    return [{
        'curve': {'steps': list(self.steps), 'accuracy': self.accuracy[i]},
        'final_accuracy': self.accuracy[i][-1],
        'steps_to_90': first_step_at(self.steps, self.accuracy[i]),
        'loss': self.loss[i],
        'grad_norm': self.norm[i],
        'grad_norm_module_peaks': self.modules[i],
        'seconds': seconds,
        'chance': self.chance,
    } for i in range(self.runs)]


def _elapsed_and_left(started: float, compiled: float, done: int, cfg: TrainConfig) -> str:
  """'12s, ETA 36s' of a run at step `done`: the time left at the rate of the chunks after the
  first (`compiled`: when it ended), which also compiles."""
  now = time.perf_counter()
  window = progress.left(now - compiled, done - cfg.eval_every, cfg.steps - cfg.eval_every)
  return f'{progress.duration(now - started)}, {window}'


def _initial_state(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig, seed):
  """(params, frozen collections, optimizer state) of a run (`seed` as in `stream`)."""
  sample = task.generate(jax.random.key(0), 2)  # shapes only: initialisation ignores the tokens
  variables = nn.unbox(model.init(stream(seed, INIT_STREAM), sample['inputs']))
  params = variables['params']
  fixed = {k: v for k, v in variables.items() if k != 'params'}  # frozen maps: no gradient
  return params, fixed, optimizer(cfg).init(params)


def train(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig, seed: int,
          label: str = '', log: Callable[[str], None] = progress.status):
  """Trains `model` on `task`; returns `(record, variables)`. `log` takes a line per chunk (by
  default a status line a terminal rewrites in place, a plain line in a log).

  record: `curve` ({'steps', 'accuracy'}), `final_accuracy`, `steps_to_90`, per step `loss` and
  `grad_norm` (global), `grad_norm_module_peaks` ({top-level module: its largest norm in each
  `eval_every` steps}), `seconds`, `chance`.
  """
  params, fixed, opt_state = jax.jit(lambda: _initial_state(model, task, cfg, seed))()
  chunk = training_chunk(model, task, cfg)
  root_key, rate = jax.random.key(seed), jnp.float32(cfg.learning_rate)
  curves = _Curves(1, task.chance)
  started, compiled = time.perf_counter(), None
  for start in range(0, cfg.steps, cfg.eval_every):
    params, opt_state, loss, norm, acc = chunk(params, fixed, opt_state, start, root_key, rate)
    curves.add(start + cfg.eval_every, *jax.tree.map(lambda x: x[None], (loss, norm, acc)))
    compiled = compiled or time.perf_counter()  # when the first chunk, which compiles, ended
    log(f'{label} step {start + cfg.eval_every}/{cfg.steps}  loss {curves.loss[0][-1]:.3f}  '
        f'eval-acc {curves.accuracy[0][-1]:.3f}  grad-norm {curves.norm[0][-1]:.3f}  '
        f'{_elapsed_and_left(started, compiled, start + cfg.eval_every, cfg)}')
  return curves.records(time.perf_counter() - started)[0], {'params': params, **fixed}


def train_group(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig,
                runs: Sequence[Run], label: str = '',
                log: Callable[[str], None] = progress.status):
  """Trains one copy of `model` per run of `runs` as one compiled program (`group_chunk`).

  Each run is the run `train(model, task, cfg with its learning_rate, its seed)` would make, up
  to float rounding: its own initialisation, data stream, held-out examples and rate; the same
  `cfg` otherwise (steps, batch size, schedule shape), so equal steps and data by construction.
  Returns `(records, variables)`: one record per run (as `train`'s; `seconds` is the group's
  wall time) and the runs' variables stacked on a leading `[runs]` axis.
  """
  seeds = jnp.asarray([run.seed for run in runs], jnp.int32)
  rates = jnp.asarray([run.learning_rate for run in runs], jnp.float32)
  params, fixed, opt_state = jax.jit(jax.vmap(
      lambda seed: _initial_state(model, task, cfg, seed)))(seeds)
  root_keys = jax.vmap(jax.random.key)(seeds)
  chunk = group_chunk(model, task, cfg)
  curves = _Curves(len(runs), task.chance)
  started, compiled = time.perf_counter(), None
  for start in range(0, cfg.steps, cfg.eval_every):
    params, opt_state, loss, norm, acc = chunk(params, fixed, opt_state, start, root_keys, rates)
    curves.add(start + cfg.eval_every, loss, norm, acc)
    compiled = compiled or time.perf_counter()  # when the first chunk, which compiles, ended
    accuracies = ' '.join(f'{a[-1]:.2f}' for a in curves.accuracy)
    log(f'{label} step {start + cfg.eval_every}/{cfg.steps}  {len(runs)} runs  eval-acc '
        f'{accuracies}  {_elapsed_and_left(started, compiled, start + cfg.eval_every, cfg)}')
  return curves.records(time.perf_counter() - started), {'params': params, **fixed}


def group_accuracy_at(model: model_lib.DecoderLM, variables, task: tasks_lib.Task,
                      seeds: Sequence[int], cfg: TrainConfig, length: int) -> np.ndarray:
  """`held_out_accuracy` at `length` of every run of a group (`variables` stacked as
  `train_group` returns them), `[runs]`; raises the model's ValueError if it cannot take
  `length`."""
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.int32))
  # One run after another, not vmapped: at 4x the training length a group's logits at once
  # ([runs, batch, 4 * length, vocab] float32) would take several times one run's memory.
  accuracy = lambda v_key: held_out_accuracy(model, v_key[0], task, v_key[1], cfg, length)
  return np.asarray(jax.jit(lambda v, k: jax.lax.map(accuracy, (v, k)))(variables, keys))
