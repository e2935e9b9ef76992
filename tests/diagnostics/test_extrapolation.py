"""Extrapolation: longer lengths a variant refuses are "cannot run", never an accuracy of 0."""
import dataclasses

import flax.linen as nn
import jax
import pytest

from synth_jax.diagnostics import extrapolation
from synth_jax.diagnostics import model
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import tasks

TASK = tasks.Task('mqar', 16, 32, {'num_kv_pairs': 2})
BUDGET = dataclasses.replace(presets.get('tiny').train, batch_size=8, eval_examples=8)


def rows_of(attention: str, positions: str = 'relative'):
  config = model.ModelConfig(vocab_size=TASK.vocab_size, attention=attention, width=16,
                             num_layers=1, max_length=TASK.length, positions=positions)
  lm = model.DecoderLM(config)
  variables = nn.unbox(jax.jit(lm.init)(jax.random.key(0), jax.numpy.ones((1, 16), 'int32')))
  return extrapolation.evaluate_lengths(lm, variables, TASK, 0, BUDGET, (2, 4))


def test_random_synthesizer_cannot_run_longer_and_vanilla_gets_a_number():
  random_rows, vanilla_rows = rows_of('random'), rows_of('vanilla')
  assert [r['length'] for r in random_rows] == [16, 32, 64]
  assert random_rows[0]['status'] == 'ran' and 0 <= random_rows[0]['accuracy'] <= 1
  for row in random_rows[1:]:
    assert row['status'] == extrapolation.CANNOT_RUN and row['accuracy'] is None
    assert 'max_query_length' in row['reason']
  assert all(r['status'] == 'ran' and 0 <= r['accuracy'] <= 1 for r in vanilla_rows)


def test_a_learned_position_table_cannot_run_longer_either():
  rows = rows_of('vanilla', positions='learned')
  assert [r['status'] for r in rows] == ['ran', 'cannot run', 'cannot run']
  assert 'max_length' in rows[1]['reason']


def test_other_errors_are_not_hidden_as_cannot_run(monkeypatch):
  def broken(*args, **kwargs):
    raise ValueError('a bug, not a length limit')
  monkeypatch.setattr(extrapolation.train_lib, 'held_out_accuracy_at', broken)
  with pytest.raises(ValueError, match='a bug'):
    extrapolation.evaluate_lengths(None, None, TASK, 0, BUDGET, (2,))


@pytest.mark.parametrize('attention', ['vanilla', 'random'])
def test_a_group_evaluates_each_run_as_it_would_alone(attention):
  config = model.ModelConfig(vocab_size=TASK.vocab_size, attention=attention, width=16,
                             num_layers=1, max_length=TASK.length)
  lm = model.DecoderLM(config)
  tokens = jax.numpy.ones((1, 16), 'int32')
  alone = [nn.unbox(jax.jit(lm.init)(jax.random.key(seed), tokens)) for seed in (3, 4)]
  stacked = jax.tree.map(lambda *x: jax.numpy.stack(x), *alone)
  grouped = extrapolation.evaluate_lengths_group(lm, stacked, TASK, [3, 4], BUDGET, (2,))
  for seed, variables, rows in zip((3, 4), alone, grouped):
    assert rows == extrapolation.evaluate_lengths(lm, variables, TASK, seed, BUDGET, (2,))
