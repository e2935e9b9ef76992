"""The official GLUE and SuperGLUE metrics, as seqio metric functions.

Each takes postprocessed `targets` and `predictions` (equal-length sequences)
and returns `{metric name: value}` with scores in percent (x100), as T5
reports them. A prediction the postprocessor could not parse is -1 and
counts as wrong.
"""
import collections
import re
import string
from typing import Any, Callable, Dict, Hashable, List, Sequence

import numpy as np
import scipy.stats
import sklearn.metrics

Metrics = Dict[str, float]


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> Metrics:
  """Percent of predictions equal to their target."""
  return {'accuracy': 100 * sklearn.metrics.accuracy_score(targets,
                                                           predictions)}


def f1_with_invalid(targets: Sequence[int],
                    predictions: Sequence[int]) -> Metrics:
  """Binary F1 of class 1 (MRPC, QQP); predictions outside {0, 1} are wrong.

  Args:
    targets: 0/1 labels.
    predictions: class ids, -1 where the output was not a label.
  """
  targets = np.asarray(targets)
  predictions = np.asarray(predictions)
  # An unparseable output must not score: flip it to the wrong class.
  invalid = (predictions != 0) & (predictions != 1)
  predictions = np.where(invalid, 1 - targets, predictions)
  return {'f1': 100 * sklearn.metrics.f1_score(targets, predictions)}


def matthews_corrcoef(targets: Sequence[int],
                      predictions: Sequence[int]) -> Metrics:
  """Matthews correlation (CoLA), in percent."""
  return {'matthews_corrcoef':
              100 * sklearn.metrics.matthews_corrcoef(targets, predictions)}


def pearson_corrcoef(targets: Sequence[float],
                     predictions: Sequence[float]) -> Metrics:
  """Pearson correlation (STS-B), in percent."""
  return {'pearson_corrcoef':
              100 * scipy.stats.pearsonr(targets, predictions)[0]}


def spearman_corrcoef(targets: Sequence[float],
                      predictions: Sequence[float]) -> Metrics:
  """Spearman rank correlation (STS-B), in percent."""
  return {'spearman_corrcoef':
              100 * scipy.stats.spearmanr(targets, predictions)[0]}


def mean_multiclass_f1(num_classes: int
                       ) -> Callable[[Sequence[int], Sequence[int]], Metrics]:
  """Macro F1 over classes 0..num_classes-1 (CB uses 3), in percent.

  An invalid prediction (-1) is a miss for its target's class and a false
  positive for no class.
  """

  def mean_f1(targets: Sequence[int], predictions: Sequence[int]) -> Metrics:
    f1 = sklearn.metrics.f1_score(targets, predictions,
                                  labels=list(range(num_classes)),
                                  average='macro', zero_division=0)
    return {f'mean_{num_classes}class_f1': 100 * f1}

  return mean_f1


def multirc_f1(targets: Sequence[Dict[str, Any]],
               predictions: Sequence[Dict[str, Any]]) -> Metrics:
  """MultiRC F1a (binary F1 over all answer options, ungrouped), reported as
  'f1' like T5.

  Args:
    targets: `{'value': 0/1, 'group': question key}` per answer option.
    predictions: `{'value': class id}` per answer option.
  """
  return f1_with_invalid([t['value'] for t in targets],
                         [p['value'] for p in predictions])


def multirc_exact_match(targets: Sequence[Dict[str, Any]],
                        predictions: Sequence[Dict[str, Any]]) -> Metrics:
  """MultiRC EM: percent of groups (question indices, as T5 groups them)
  whose every answer option is right.

  Needs whole questions: evaluating a subsample that splits a question's
  options gives a different number.
  """
  correct = collections.defaultdict(lambda: True)
  for target, prediction in zip(targets, predictions):
    group = target['group']
    correct[group] = correct[group] and target['value'] == prediction['value']
  return {'exact_match': 100 * float(np.mean(list(correct.values())))}


def normalize_squad(text: str) -> str:
  """SQuAD v1.1 answer normalization: lowercase, drop punctuation, articles
  and extra whitespace."""
  text = text.lower()
  text = ''.join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r'\b(a|an|the)\b', ' ', text)
  return ' '.join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  target_tokens = target.split()
  prediction_tokens = prediction.split()
  common = (collections.Counter(target_tokens) &
            collections.Counter(prediction_tokens))
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(prediction_tokens)
  recall = overlap / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def record_em_f1(targets: Sequence[Dict[str, Any]],
                 predictions: Sequence[Dict[str, Any]]) -> Metrics:
  """ReCoRD exact match ('em', T5's name) and token F1 ('f1'), max over
  each query's gold answers.

  The task has one example per gold answer, so each query is scored once:
  at its first example.

  Args:
    targets: `{'value': [gold answers], 'group': query key}` per example.
    predictions: `{'value': predicted answer}` per example.

  Raises:
    ValueError: a query has no gold answers (e.g. the unlabeled test split).
  """
  seen = set()
  exact, f1 = [], []
  for target, prediction in zip(targets, predictions):
    group: Hashable = target['group']
    if group in seen:
      continue
    seen.add(group)
    answers: List[str] = [normalize_squad(a) for a in target['value']]
    if not answers:
      raise ValueError(f'ReCoRD query {group} has no gold answers to score '
                       'against; evaluate on the validation split.')
    predicted = normalize_squad(prediction['value'])
    exact.append(max(float(predicted == a) for a in answers))
    f1.append(max(_token_f1(a, predicted) for a in answers))
  return {'em': 100 * float(np.mean(exact)), 'f1': 100 * float(np.mean(f1))}
