"""Tests for synth_jax/tasks/postprocessors.py."""
import numpy as np
import pytest

from synth_jax.tasks import postprocessors

COLA = ('unacceptable', 'acceptable')


@pytest.mark.parametrize('text,expected', [
    ('acceptable', 1), ('unacceptable', 0), ('maybe', -1), ('', -1), ('Acceptable', -1),
    # T5 matches exactly: whitespace or bytes make a prediction invalid.
    (' acceptable', -1), ('acceptable ', -1), ('acceptable\n', -1), (b'acceptable', -1)])
def test_string_label_to_class_id_maps_unknown_labels_to_minus_one(
    text, expected):
  assert postprocessors.string_label_to_class_id(
      text, label_classes=COLA) == expected


@pytest.mark.parametrize('text,expected', [
    ('3.4', 3.4), ('0.0', 0.0), ('three', -1.0), ('', -1.0), ('<unk>', -1.0),
    (' 3.4\n', 3.4)])  # Python's float, as T5: surrounding whitespace is allowed
def test_string_to_float_maps_non_numbers_to_minus_one(text, expected):
  assert postprocessors.string_to_float(text) == expected


def test_multirc_target_carries_its_question_index_as_group():
  """T5 groups by idx/question alone, not by (paragraph, question)."""
  example = {'idx/paragraph': np.int32(3), 'idx/question': np.int32(7),
             'idx/answer': np.int32(1)}
  assert postprocessors.multirc('True', example=example, is_target=True) == {
      'value': 1, 'group': 7}
  assert postprocessors.multirc('False', example=example) == {'value': 0}
  assert postprocessors.multirc('Maybe', example=example) == {'value': -1}


def test_record_target_lists_all_gold_answers():
  example = {'answers': np.array([b'Paris', b'the city']),
             'idx/passage': np.int32(2), 'idx/query': np.int32(5)}
  assert postprocessors.record('Paris', example=example, is_target=True) == {
      'value': ['Paris', 'the city'], 'group': (2, 5)}
  assert postprocessors.record('Lyon', example=example) == {'value': 'Lyon'}


@pytest.mark.parametrize('prediction,candidate,expected', [
    ('the city councilmen', b'The city councilmen', 1),
    ('councilmen', b'The city councilmen', 1),  # prediction within candidate
    ('the fuzzy bunny', b'bunny', 1),  # candidate within prediction
    ('their dog', b'the dog', 1),  # determiners ignored
    ('the demonstrators', b'The city councilmen', 0),
    ("Bob's hat", b'Bob', 0),  # possessive on one side only
    ('', b'Bob', -1),
    ('  ', b'Bob', -1),
    # T5 splits on single spaces: a tab joins words, a double space leaves an empty word.
    ('city\tcouncilmen', b'The city councilmen', 0),
    ('a  bunny', b'fuzzy bunny', 0),  # words {'', 'bunny'}: neither side within the other
])
def test_wsc_simple_says_whether_prediction_names_the_candidate(
    prediction, candidate, expected):
  example = {'targets_pretokenized': candidate, 'label': np.int64(1)}
  assert postprocessors.wsc_simple(prediction, example=example) == expected


def test_wsc_simple_target_is_the_label():
  example = {'targets_pretokenized': b'Bob', 'label': np.int64(0)}
  assert postprocessors.wsc_simple('Bob', example=example,
                                   is_target=True) == 0
