"""Length extrapolation: a model trained at length L, evaluated on held-out examples at k * L.

A variant whose parameters cover only the training length (a synthesizer's `[heads, L, L]` score
map, a learned position table) refuses longer inputs with a ValueError naming the `max_...`
length knob; that is recorded as "cannot run" with the reason, never as accuracy 0, which would
claim it ran and failed.
"""
from typing import Sequence

from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import tasks as tasks_lib
from synth_jax.diagnostics import train as train_lib

CANNOT_RUN = 'cannot run'


def evaluate_lengths(model: model_lib.DecoderLM, variables, task: tasks_lib.Task, seed: int,
                     cfg: train_lib.TrainConfig, factors: Sequence[int]) -> list[dict]:
  """Per factor k (1 is the training length): `{'factor', 'length', 'accuracy'}`, where a run
  that cannot take the length has accuracy None, `'status': 'cannot run'` and the `reason`."""
  rows = []
  for factor in (1, *factors):
    length = factor * task.length
    row = {'factor': factor, 'length': length}
    try:
      accuracy = train_lib.held_out_accuracy_at(model, variables, task, seed, cfg, length)
      row.update(accuracy=accuracy, status='ran')
    except ValueError as error:
      if 'max_' not in str(error):  # not a length limit: a real error
        raise
      row.update(accuracy=None, status=CANNOT_RUN, reason=str(error))
    rows.append(row)
  return rows
