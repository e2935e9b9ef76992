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
import optax

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
  `[batch, length, vocab]`."""
  mask = batch['loss_mask']
  count = jnp.maximum(jnp.sum(mask), 1.0)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
  correct = jnp.argmax(logits, axis=-1) == batch['targets']
  return jnp.sum(loss * mask) / count, jnp.sum(correct * mask) / count


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
    correct = jnp.argmax(model.apply(variables, batch['inputs']), -1) == batch['targets']
    return jnp.sum(correct * batch['loss_mask']), jnp.sum(batch['loss_mask'])
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


def training_chunk(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig):
  """The compiled unit of training: `chunk(params, fixed, opt_state, start, root_key, rate)` runs
  `eval_every` steps from step `start`, then the held-out accuracy; returns `(params, opt_state,
  loss [eval_every], gradient norms, accuracy)`.

  The seed's root key, the peak rate and the frozen collections (`fixed`, drawn from the seed)
  are arguments, not constants, so runs that differ only in seed or rate lower to one program,
  which JAX's persistent compilation cache then serves to every such run.
  """
  @jax.jit
  def chunk(params, fixed, opt_state, start, root_key, learning_rate):
    tx = optimizer(cfg, learning_rate)
    data_key = stream(root_key, DATA_STREAM)

    def step(carry, index):
      params, opt_state = carry
      batch = task.generate(jax.random.fold_in(data_key, index), cfg.batch_size)
      def loss_fn(p):
        return answer_metrics(model.apply({'params': p, **fixed}, batch['inputs']), batch)[0]
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


def train(model: model_lib.DecoderLM, task: tasks_lib.Task, cfg: TrainConfig, seed: int,
          label: str = '', log: Callable[[str], None] = print):
  """Trains `model` on `task`; returns `(record, variables)`.

  record: `curve` ({'steps', 'accuracy'}), `final_accuracy`, `steps_to_90`, per step `loss`,
  `grad_norm` (global) and `grad_norm_modules` ({top-level module: norms}), `seconds`, `chance`.
  """
  sample = task.generate(stream(seed, DATA_STREAM), 2)
  variables = nn.unbox(jax.jit(model.init)(stream(seed, INIT_STREAM), sample['inputs']))
  params = variables['params']
  fixed = {k: v for k, v in variables.items() if k != 'params'}  # frozen maps: no gradient
  chunk = training_chunk(model, task, cfg)
  opt_state = optimizer(cfg).init(params)
  root_key, rate = jax.random.key(seed), jnp.float32(cfg.learning_rate)
  curve_steps, curve, losses, norms, module_norms = [], [], [], [], {}
  started = time.perf_counter()
  for start in range(0, cfg.steps, cfg.eval_every):
    params, opt_state, loss, norm, acc = chunk(params, fixed, opt_state, start, root_key, rate)
    acc = float(acc)
    curve_steps.append(start + cfg.eval_every)
    curve.append(acc)
    losses += trace_values(loss)
    norms += trace_values(norm['global'])
    for name, trace in norm['modules'].items():
      module_norms.setdefault(name, []).extend(trace_values(trace))
    log(f'{label} step {start + cfg.eval_every}/{cfg.steps}  loss {losses[-1]:.3f}  '
        f'eval-acc {acc:.3f}  grad-norm {norms[-1]:.3f}  {time.perf_counter() - started:.0f}s')
  record = {
      'curve': {'steps': curve_steps, 'accuracy': curve},
      'final_accuracy': curve[-1],
      'steps_to_90': first_step_at(curve_steps, curve),
      'loss': losses,
      'grad_norm': norms,
      'grad_norm_modules': module_norms,
      'seconds': time.perf_counter() - started,
      'chance': task.chance,
  }
  return record, {'params': params, **fixed}
