"""Task metrics from decoded outputs: seqio's Evaluator driven by our greedy decoder.

For every task of the eval mixture that defines metrics (GLUE, SuperGLUE), the Evaluator feeds
the eval split through `seqio.EncDecFeatureConverter`, we greedy-decode it on the decode cache, and
seqio applies the task's postprocessor and metric functions to the decoded text.
"""
from typing import Mapping, Optional

import jax.numpy as jnp
import numpy as np
import seqio

from synth_jax import decoding


def make_evaluator(mixture_or_task_name: str, feature_lengths: Mapping[str, int], split: str,
                   num_examples: Optional[int] = None) -> Optional[seqio.Evaluator]:
  """An Evaluator over the tasks with metrics, or None when there are none (pretraining)."""
  if not tasks_with_metrics(mixture_or_task_name, split):
    return None  # (seqio's Evaluator would warn that it skips eval, though ours still runs)
  evaluator = seqio.Evaluator(
      mixture_or_task_name, seqio.EncDecFeatureConverter(pack=False), eval_split=split,
      sequence_length=dict(feature_lengths), num_examples=num_examples,
      async_compute_metrics=False, use_memory_cache=False)
  return evaluator if evaluator.eval_tasks else None


def tasks_with_metrics(mixture_or_task_name: str, split: str) -> list[seqio.Task]:
  """The tasks of a mixture (or the task) that define metric functions and have `split`."""
  found = seqio.get_mixture_or_task(mixture_or_task_name)
  tasks = found.tasks if isinstance(found, seqio.Mixture) else [found]
  return [t for t in tasks if (t.predict_metric_fns or t.score_metric_fns) and split in t.splits]


def predict_fn(model, variables, batch_size: int, decode_length: int, eos_id: int = 1):
  """A seqio `predict_fn`: (index, features) examples -> [(index, token ids)] in order.

  Token ids have the fixed decode length, zeros after EOS; seqio's vocabulary decode stops at EOS.
  """
  def predict(dataset):
    results = []
    for indices, batch in dataset.batch(batch_size).as_numpy_iterator():
      inputs = batch['encoder_input_tokens']
      pad = batch_size - len(indices)  # a fixed batch shape compiles once
      if pad:
        inputs = np.concatenate([inputs, np.zeros((pad, inputs.shape[1]), inputs.dtype)])
      tokens = np.asarray(decoding.greedy(model, variables, jnp.asarray(inputs), decode_length,
                                          eos_id=eos_id))
      results.extend((int(i), t.tolist()) for i, t in zip(indices, tokens))
    return results
  return predict


def run(evaluator: seqio.Evaluator, model, variables, batch_size: int, decode_length: int,
        step: Optional[int] = None) -> dict[str, dict[str, float]]:
  """`{task name: {metric: value}}` of greedy predictions on the evaluator's tasks."""
  all_metrics, _ = evaluator.evaluate(
      compute_metrics=True, step=step,
      predict_fn=predict_fn(model, variables, batch_size, decode_length))
  metrics = all_metrics.result()
  return {task: {name: float(getattr(value, 'value', value)) for name, value in values.items()}
          for task, values in metrics.items()}
