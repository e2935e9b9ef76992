"""Postprocessors: decoded text -> the values the metrics compare.

seqio calls `postprocess_fn(text, example=example, is_target=bool)` on both
the decoded model output and the target text (both `str`); `example` is the
task's preprocessed example as numpy values (strings as bytes).

Each behaves as the `t5` package's postprocessor of the same name (t5.data
0.9.x), which produced the published T5 and Synthesizer tables: a label must
match its class name exactly (' acceptable' or b'acceptable' is invalid, -1),
and MultiRC answers are grouped by question index alone.
"""
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

_DETERMINERS = frozenset({
    'a', 'an', 'few', 'her', 'his', 'each', 'every', 'many', 'much', 'my',
    'our', 'some', 'that', 'the', 'their', 'these', 'this', 'those', 'which',
    'whose', 'your'})


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def string_label_to_class_id(string_label: str,
                             label_classes: Sequence[str],
                             default: int = -1,
                             **unused_kwargs) -> int:
  """Index of `string_label` in `label_classes`, or `default` (-1) if absent.

  E.g. label_classes ('unacceptable', 'acceptable'): 'acceptable' -> 1,
  'maybe', ' acceptable', 'acceptable\n' and b'acceptable' -> -1 (exact
  match, as T5: whitespace or bytes make a prediction invalid).
  """
  if string_label in label_classes:
    return list(label_classes).index(string_label)
  return default


def string_to_float(string: str, default: float = -1.0,
                    **unused_kwargs) -> float:
  """'3.4' -> 3.4 (STS-B); text that is not a number -> `default` (-1.0).

  Python's `float` rules, as T5: surrounding whitespace is allowed.
  """
  try:
    return float(string)
  except ValueError:
    return default


def _key(value: Any) -> Any:
  return value.item() if isinstance(value, np.generic) else value


def multirc(string_label: str,
            example: Optional[Mapping[str, Any]] = None,
            is_target: bool = False) -> Dict[str, Any]:
  """MultiRC answer option -> `{'value': 0/1/-1}`, plus its question on targets.

  Targets carry `'group'`: the question index, which the exact-match metric
  groups by (T5's grouping: by `idx/question` alone, not by paragraph and
  question); predictions don't need it.
  """
  result = {'value': string_label_to_class_id(string_label,
                                              ('False', 'True'))}
  if is_target:
    result['group'] = _key(example['idx/question'])
  return result


def record(answer: str,
           example: Optional[Mapping[str, Any]] = None,
           is_target: bool = False) -> Dict[str, Any]:
  """ReCoRD: prediction -> `{'value': text}`; target -> all gold answers.

  Targets are `{'value': [every gold answer], 'group': (passage idx, query
  idx)}` so the metric scores each query once, against its best answer.
  """
  if is_target:
    return {'value': [_text(a) for a in example['answers']],
            'group': (_key(example['idx/passage']),
                      _key(example['idx/query']))}
  return {'value': _text(answer)}


def wsc_simple(prediction: str,
               example: Optional[Mapping[str, Any]] = None,
               is_target: bool = False) -> int:
  """WSC: did the model name this example's candidate referent?

  Targets are the example's 0/1 label (is the candidate the pronoun's
  referent). A prediction is 1 if it names the candidate, ignoring case and
  determiners and allowing either to extend the other ('fuzzy bunny' names
  'bunny'), 0 if not, -1 if empty. A possessive on one side only ('Bob' vs
  "Bob's hat") is a different referent. Words are split on single spaces
  exactly as T5 does: a double space or a tab is part of what is compared.
  """
  if is_target:
    return int(example['label'])

  def without_determiners(text):
    words = _text(text).strip().lower().split(' ')
    return ' '.join(w for w in words if w not in _DETERMINERS)

  predicted = without_determiners(prediction)
  if not predicted:
    return -1
  candidate = without_determiners(example['targets_pretokenized'])
  if ("'" in predicted) != ("'" in candidate):
    return 0
  predicted_words, candidate_words = set(predicted.split(' ')), set(
      candidate.split(' '))
  return int(predicted_words <= candidate_words or
             candidate_words <= predicted_words)
