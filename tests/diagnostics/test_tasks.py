"""The task generators: structure of every batch, checked against a plain reading of the tokens."""
import jax
import numpy as np
import pytest

from synth_jax.diagnostics import tasks

VOCAB = 64


def numpy_batch(task, batch_size=16, seed=0, length=None):
  batch = task.generate(jax.random.key(seed), batch_size, length)
  return {k: np.asarray(v) for k, v in batch.items()}


def bindings(row_inputs, context_pairs):
  """The (key, value) pairs of a recall context, in order."""
  return [(row_inputs[2 * i], row_inputs[2 * i + 1]) for i in range(context_pairs)]


@pytest.mark.parametrize('name,kv_pairs,bound', [('mqar', 6, 1), ('overwrite', 4, 2)])
def test_recall_keys_and_values_are_disjoint_and_every_answer_is_the_latest_binding(
    name, kv_pairs, bound):
  task = tasks.Task(name, 48, VOCAB, {'num_kv_pairs': kv_pairs})
  batch = numpy_batch(task)
  (key_lo, key_hi), (value_lo, value_hi) = tasks.key_and_value_ranges(VOCAB)
  assert key_hi <= value_lo  # disjoint halves
  context = kv_pairs * bound
  for inputs, targets, mask in zip(batch['inputs'], batch['targets'], batch['loss_mask']):
    pairs = bindings(inputs, context)
    assert all(key_lo <= k < key_hi and value_lo <= v < value_hi for k, v in pairs)
    latest = {}
    for k, v in pairs:
      if bound == 2 and k in latest:
        assert v != latest[k]  # a rebinding changes the value
      latest[k] = v
    assert len(latest) == kv_pairs and all(
        [k for k, _ in pairs].count(k) == bound for k in latest)
    answers = np.flatnonzero(mask)
    # The loss sees exactly one answer per key, each at a query of that key after the context.
    assert len(answers) == kv_pairs and answers.min() >= 2 * context
    assert sorted(inputs[answers]) == sorted(latest)
    for position in answers:
      assert targets[position] == latest[inputs[position]]
    # Outside the answers the query region is BLANK filler.
    query_region = np.delete(inputs[2 * context:], answers - 2 * context)
    assert (query_region == tasks.BLANK).all()


def test_overwrite_answer_differs_from_the_first_binding():
  """Answering with the first binding is always wrong: the task needs the order."""
  task = tasks.Task('overwrite', 48, VOCAB, {'num_kv_pairs': 4})
  batch = numpy_batch(task, batch_size=32)
  for inputs, targets, mask in zip(batch['inputs'], batch['targets'], batch['loss_mask']):
    first = {}
    for k, v in bindings(inputs, 8):
      first.setdefault(k, v)
    for position in np.flatnonzero(mask):
      assert targets[position] != first[inputs[position]]


def test_mqar_queries_land_early_more_often_than_late():
  """Zoology's power-law placement: the first query slot is far likelier than the last."""
  task = tasks.Task('mqar', 64, VOCAB, {'num_kv_pairs': 4})
  mask = numpy_batch(task, batch_size=512)['loss_mask']
  counts = mask[:, 8::2].sum(0)  # answers sit at even offsets of the query region
  assert counts[0] > 3 * counts[-1]


def test_induction_repeats_the_segment_before_it_and_asks_only_for_the_repeat():
  task = tasks.Task('induction', 32, VOCAB)
  batch = numpy_batch(task, batch_size=32)
  periods = set()
  for inputs, targets, mask in zip(batch['inputs'], batch['targets'], batch['loss_mask']):
    sequence = np.concatenate([inputs, targets[-1:]])
    period = int(mask.sum()) + 1
    periods.add(period)
    assert 8 <= period <= 16
    np.testing.assert_array_equal(sequence[-period:], sequence[-2 * period:-period])
    assert len(set(sequence[:-period])) == len(sequence) - period  # distinct before the repeat
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(33 - period, 32))
    np.testing.assert_array_equal(targets, sequence[1:])
  assert len(periods) > 3  # no fixed offset for position alone to exploit


def test_selective_copy_answers_are_the_content_tokens_in_order():
  task = tasks.Task('selective_copy', 32, VOCAB, {'num_tokens': 5})
  batch = numpy_batch(task)
  for inputs, targets, mask in zip(batch['inputs'], batch['targets'], batch['loss_mask']):
    context = inputs[:27]
    content = context[context >= tasks.FIRST_CONTENT]
    assert len(content) == 5 and set(context[context < tasks.FIRST_CONTENT]) == {tasks.BLANK}
    assert (inputs[27:] == tasks.MARKER).all()
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(27, 32))
    np.testing.assert_array_equal(targets[mask > 0], content)


def test_generators_are_pure_functions_of_the_key_and_run_at_other_lengths():
  task = tasks.Task('mqar', 32, VOCAB, {'num_kv_pairs': 4})
  a, b, c = (numpy_batch(task, seed=s) for s in (0, 0, 1))
  np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert (a['inputs'] != c['inputs']).any()
  longer = numpy_batch(task, length=64)
  assert longer['inputs'].shape == (16, 64) and longer['loss_mask'].sum(1).tolist() == [4] * 16


def test_too_short_lengths_and_unknown_tasks_are_clear_errors():
  with pytest.raises(ValueError, match='too short for 8 keys'):
    tasks.Task('mqar', 16, VOCAB, {'num_kv_pairs': 8}).generate(jax.random.key(0), 2)
  with pytest.raises(ValueError, match='unknown task'):
    tasks.Task('copy', 16, VOCAB)


@pytest.mark.parametrize('name,options,length', [
    ('mqar', {'num_kv_pairs': 6}, 48), ('overwrite', {'num_kv_pairs': 4}, 48),
    ('induction', {}, 48), ('induction', {}, 13), ('induction', {}, 96),
    ('selective_copy', {'num_tokens': 5}, 40)])
def test_answer_positions_hold_every_answer_of_each_row_once(name, options, length):
  batch = numpy_batch(tasks.Task(name, length, VOCAB, options), batch_size=64, length=length)
  positions, mask = batch['answer_positions'], batch['loss_mask']
  assert positions.dtype == np.int32 and positions.shape[0] == 64
  assert ((0 <= positions) & (positions < length)).all()
  for row_positions, row_mask in zip(positions, mask):
    assert len(set(row_positions.tolist())) == len(row_positions)  # no answer counted twice
    assert set(np.flatnonzero(row_mask).tolist()) <= set(row_positions.tolist())
  if name != 'induction':  # exactly the answers; induction's cover its longest repeat
    assert (np.take_along_axis(mask, positions, axis=1) == 1).all()
