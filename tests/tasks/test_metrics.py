"""Tests for synth_jax/tasks/metrics.py, against values worked out by hand."""
import pytest

from synth_jax.tasks import metrics
from synth_jax.tasks import postprocessors


def test_accuracy_is_percent_correct():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == {'accuracy': 75.0}


def test_f1_counts_invalid_predictions_as_wrong():
  # -1 at index 1 becomes a false negative: TP=2 (0, 4), FP=1 (3), FN=1 (1),
  # so precision = recall = 2/3.
  result = metrics.f1_with_invalid([1, 1, 0, 0, 1], [1, -1, 0, 1, 1])
  assert result['f1'] == pytest.approx(200 / 3)


def test_f1_does_not_modify_the_predictions():
  predictions = [1, -1, 0]
  metrics.f1_with_invalid([1, 1, 0], predictions)
  assert predictions == [1, -1, 0]


def test_matthews_corrcoef_matches_confusion_matrix_formula():
  # TP=1, TN=2, FP=0, FN=1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3) = 1/sqrt(3).
  result = metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])
  assert result['matthews_corrcoef'] == pytest.approx(100 / 3**0.5)


def test_pearson_corrcoef_matches_hand_computation():
  # Deviations (-1, 0, 1) and (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 14/3).
  result = metrics.pearson_corrcoef([1, 2, 3], [1, 2, 4])
  assert result['pearson_corrcoef'] == pytest.approx(100 * 3 / (28 / 3)**0.5)


def test_spearman_corrcoef_uses_ranks():
  # Ranks (1, 3, 2, 4): rho = 1 - 6 * 2 / (4 * 15) = 0.8.
  result = metrics.spearman_corrcoef([1, 2, 3, 4], [10, 30, 20, 40])
  assert result['spearman_corrcoef'] == pytest.approx(80.0)


def test_mean_3class_f1_averages_per_class_f1():
  # Class 0: F1 1; class 1: missed, F1 0; class 2: one FP, and its only
  # example predicted invalid, F1 0. Mean 1/3.
  mean_f1 = metrics.mean_multiclass_f1(3)
  result = mean_f1([0, 0, 1, 2], [0, 0, 2, -1])
  assert result == {'mean_3class_f1': pytest.approx(100 / 3)}


def test_multirc_f1_and_exact_match_group_by_question_index():
  """Groups are question indices (T5's postprocessor): a question index repeated in two
  paragraphs is one group."""
  examples = [  # (paragraph, question, target, prediction)
      (0, 0, 1, 1), (0, 0, 0, 0),   # question 0 of paragraph 0: right
      (0, 1, 1, 0),                 # question 1: wrong
      (1, 0, 0, 1),                 # question 0 again, in paragraph 1: wrong
      (1, 2, 0, 0)]                 # question 2: right
  targets = [postprocessors.multirc('True' if t else 'False', is_target=True,
                                    example={'idx/paragraph': p, 'idx/question': q})
             for p, q, t, _ in examples]
  predictions = [{'value': v} for *_, v in examples]
  # F1 over all options: TP=1, FN=1, FP=1 -> 50, reported as 'f1' (T5's name).
  assert metrics.multirc_f1(targets, predictions) == {'f1': pytest.approx(50.0)}
  # Groups 0 (three options, one wrong), 1 (wrong), 2 (right): 1 of 3 = 33.3. Grouping
  # by (paragraph, question) would give 2 of 4 = 50.
  assert metrics.multirc_exact_match(targets, predictions) == {
      'exact_match': pytest.approx(100 / 3)}


def test_normalize_squad_drops_case_punctuation_articles_and_spaces():
  assert metrics.normalize_squad('  The Quick,  brown fox! an') == (
      'quick brown fox')


def test_record_scores_each_query_once_against_its_best_answer():
  targets = [
      {'value': ['The Eiffel Tower', 'Paris'], 'group': (0, 0)},
      {'value': ['The Eiffel Tower', 'Paris'], 'group': (0, 0)},
      {'value': ['Paris'], 'group': (0, 1)},
  ]
  predictions = [{'value': 'eiffel tower!'}, {'value': 'junk'},
                 {'value': 'Paris, France'}]
  # Query 1: exact after normalization (the duplicate is skipped).
  # Query 2: 'paris france' vs 'paris': EM 0, F1 2*(1/2*1)/(1/2+1) = 2/3.
  result = metrics.record_em_f1(targets, predictions)
  assert set(result) == {'em', 'f1'}  # T5's names
  assert result['em'] == pytest.approx(50.0)
  assert result['f1'] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_record_without_gold_answers_raises():
  with pytest.raises(ValueError, match='validation split'):
    metrics.record_em_f1([{'value': [], 'group': (0, 0)}], [{'value': 'x'}])
