"""Length extrapolation: a model trained at length L, evaluated on held-out examples at k * L.

A variant whose parameters cover only the training length (a synthesizer's `[heads, L, L]` score
map, a learned position table) refuses longer inputs with a ValueError naming the `max_...`
length knob; that is recorded as "cannot run" with the reason, never as accuracy 0, which would
claim it ran and failed.
"""
from typing import Callable, Sequence

from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import tasks as tasks_lib
from synth_jax.diagnostics import train as train_lib

CANNOT_RUN = 'cannot run'


def _rows(accuracies_at: Callable[[int], Sequence[float]], runs: int, task: tasks_lib.Task,
          factors: Sequence[int]) -> list[list[dict]]:
  """Per run, per factor: the rows `evaluate_lengths` describes; `accuracies_at(length)` gives
  every run's accuracy at `length` or raises the model's ValueError."""
  rows = [[] for _ in range(runs)]
  for factor in (1, *factors):
    length = factor * task.length
    try:
      accuracies = [float(a) for a in accuracies_at(length)]
      found = [dict(accuracy=a, status='ran') for a in accuracies]
    except ValueError as error:
      if 'max_' not in str(error):  # not a length limit: a real error
        raise
      found = [dict(accuracy=None, status=CANNOT_RUN, reason=str(error))] * runs
    for run_rows, outcome in zip(rows, found):
      run_rows.append({'factor': factor, 'length': length, **outcome})
  return rows


def evaluate_lengths(model: model_lib.DecoderLM, variables, task: tasks_lib.Task, seed: int,
                     cfg: train_lib.TrainConfig, factors: Sequence[int]) -> list[dict]:
  """Per factor k (1 is the training length): `{'factor', 'length', 'accuracy'}`, where a run
  that cannot take the length has accuracy None, `'status': 'cannot run'` and the `reason`."""
  return _rows(lambda length: [train_lib.held_out_accuracy_at(model, variables, task, seed, cfg,
                                                              length)], 1, task, factors)[0]


def evaluate_lengths_group(model: model_lib.DecoderLM, variables, task: tasks_lib.Task,
                           seeds: Sequence[int], cfg: train_lib.TrainConfig,
                           factors: Sequence[int]) -> list[list[dict]]:
  """`evaluate_lengths` of every run of a group (`train.train_group`'s stacked variables), one
  program per length."""
  return _rows(lambda length: train_lib.group_accuracy_at(model, variables, task, seeds, cfg,
                                                          length), len(seeds), task, factors)
