"""The training loop: a tiny run must tell a content-based attention from a fixed map."""
import dataclasses
import re

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from synth_jax.diagnostics import model
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import tasks
from synth_jax.diagnostics import train

# The tiny preset's model and budget on a smaller induction task (quick on 2 CPU cores).
TINY = presets.get('tiny')
TASK = tasks.Task('induction', 24, 64)
BUDGET = dataclasses.replace(TINY.train, steps=250, eval_examples=64)


def tiny_model(attention: str) -> model.DecoderLM:
  return model.DecoderLM(model.ModelConfig(vocab_size=TASK.vocab_size, attention=attention,
                                           max_length=TASK.length, **TINY.model))


def run(attention: str):
  return train.train(tiny_model(attention), TASK, BUDGET, seed=0, log=lambda line: None)[0]


@pytest.mark.slow
def test_vanilla_learns_induction_while_a_fixed_random_map_stays_at_chance():
  """Fails if the model, the task or the loop is broken: vanilla must copy from context, which
  an input-independent attention map cannot do."""
  vanilla, fixed = run('vanilla'), run('fixed_random')
  assert vanilla['final_accuracy'] > 0.9  # chance: 1/61
  # Near chance: a map blind to content can still pool the tokens seen so far, and with distinct
  # tokens the answer is one of the ~period (6..12) not yet repeated: ~0.1 at best.
  assert fixed['final_accuracy'] < 0.25
  assert vanilla['steps_to_90'] == train.first_step_at(vanilla['curve']['steps'],
                                                       vanilla['curve']['accuracy'])
  assert fixed['steps_to_90'] is None
  steps = BUDGET.steps
  assert vanilla['curve']['steps'] == list(range(BUDGET.eval_every, steps + 1, BUDGET.eval_every))
  assert len(vanilla['grad_norm']) == len(vanilla['loss']) == steps
  peaks = vanilla['grad_norm_module_peaks']
  assert set(peaks) >= {'layers_0', 'layers_1', 'token_embedder'}
  # Per evaluation interval: no module's peak exceeds the largest global norm (a module's norm is
  # part of the global one), and the modules' peaks together bound it (global^2 = sum of squares).
  modules = np.array(list(peaks.values()))  # [modules, intervals]
  assert modules.shape[1] == len(vanilla['curve']['steps'])
  interval_peaks = np.array(vanilla['grad_norm']).reshape(-1, BUDGET.eval_every).max(1)
  assert (modules <= interval_peaks * (1 + 1e-4)).all()
  assert (interval_peaks <= np.sqrt((modules ** 2).sum(0)) * (1 + 1e-4)).all()
  assert (modules.max(0) >= interval_peaks / np.sqrt(len(modules)) * (1 - 1e-4)).all()


def test_steps_to_90_is_the_first_evaluation_at_or_above_it_and_none_if_never():
  assert train.first_step_at([50, 100, 150], [0.5, 0.9, 0.95]) == 100
  assert train.first_step_at([50, 100, 150], [0.95, 0.5, 0.2]) == 50
  assert train.first_step_at([50, 100], [0.5, 0.89]) is None


def test_every_variant_sees_the_same_batches_and_held_out_examples():
  data = [TASK.generate(jax.random.fold_in(train.stream(7, train.DATA_STREAM), i), 4)
          for i in (0, 0, 1)]
  held_out = TASK.generate(jax.random.fold_in(train.stream(7, train.EVAL_STREAM), 0), 4)
  np.testing.assert_array_equal(data[0]['inputs'], data[1]['inputs'])
  assert (data[0]['inputs'] != data[2]['inputs']).any()
  assert (data[0]['inputs'] != held_out['inputs']).any()


def test_traces_keep_five_significant_digits():
  assert train.trace_values(np.array([9.518963813781738, 0.00123456789, 12345.678])) == [
      9.519, 0.0012346, 12346.0]


def test_a_budget_without_room_after_warmup_is_a_clear_error():
  with pytest.raises(ValueError, match='give more --steps than the warmup'):
    train.TrainConfig(steps=100, warmup_steps=100, eval_every=50)


def test_a_traced_rate_follows_the_schedule_of_the_configured_one():
  """The rate is an argument of the compiled chunk (so other rates reuse its program); the
  updates it gives must follow the configured schedule: linear warmup, cosine decay to a tenth.
  With a constant gradient and the weights held at 1, AdamW's step t is exactly
  -rate_t * (sign(g) + weight_decay)."""
  cfg = train.TrainConfig(steps=200, learning_rate=3e-3, warmup_steps=20, eval_every=50)
  params = {'w': np.ones(3, np.float32)}
  grads = {'w': np.array([1.0, -2.0, 0.5], np.float32)}

  def updates(tx):
    def step(state, _):
      update, state = tx.update(grads, state, params)
      return state, update['w']
    return jax.lax.scan(step, tx.init(params), None, length=cfg.steps)[1]

  traced = jax.jit(lambda rate: updates(train.optimizer(cfg, rate)))
  rates = optax.warmup_cosine_decay_schedule(0.0, 3e-3, 20, 200, 3e-4)(np.arange(200))
  expected = -np.asarray(rates)[:, None] * (np.sign(grads['w']) + cfg.weight_decay)
  np.testing.assert_allclose(traced(np.float32(3e-3)), expected, rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(updates(train.optimizer(cfg)), expected, rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(traced(np.float32(6e-3)), 2 * expected, rtol=1e-4, atol=1e-9)


def _lowered_chunk(attention: str, seed: int, rate: float) -> str:
  lm = tiny_model(attention)
  variables = nn.unbox(lm.init(train.stream(seed, train.INIT_STREAM),
                               np.zeros((1, TASK.length), np.int32)))
  params = variables.pop('params')
  chunk = train.training_chunk(lm, TASK, BUDGET)
  return chunk.lower(params, variables, train.optimizer(BUDGET).init(params), 0,
                     jax.random.key(seed), np.float32(rate)).as_text(), variables


@pytest.mark.parametrize('attention', ['vanilla', 'orthogonal'])
def test_other_seeds_and_rates_lower_to_the_same_program(attention):
  """What lets a sweep's runs share compiled programs: nothing drawn from the seed (orthogonal's
  frozen W_Q, W_K included) nor the rate is a constant of the program."""
  program, fixed = _lowered_chunk(attention, seed=0, rate=5e-3)
  other, other_fixed = _lowered_chunk(attention, seed=1, rate=2e-3)
  assert program == other
  if attention == 'orthogonal':  # the frozen maps differ by seed, yet the program does not
    first, second = jax.tree.leaves(fixed), jax.tree.leaves(other_fixed)
    assert first and any((a != b).any() for a, b in zip(first, second))


def test_the_seed_reaches_the_compiled_chunk_as_the_same_streams():
  """The chunk's final evaluation (seed passed as its key) equals an evaluation outside it with
  the seed as a plain int: same held-out examples, so the same accuracy."""
  lm = tiny_model('vanilla')
  budget = dataclasses.replace(BUDGET, steps=100)
  record, variables = train.train(lm, TASK, budget, seed=5, log=lambda line: None)
  assert record['final_accuracy'] == pytest.approx(
      train.held_out_accuracy_at(lm, variables, TASK, 5, budget, TASK.length), abs=1e-6)
  assert record['final_accuracy'] != pytest.approx(
      train.held_out_accuracy_at(lm, variables, TASK, 6, budget, TASK.length), abs=1e-6)


def test_a_group_trains_each_run_as_it_would_train_alone():
  """`train_group` (one vmapped program) against `train` run by run: the same data stream,
  initialisation (orthogonal's frozen W_Q, W_K included) and rate give the same curve, losses,
  gradient norms and parameters, and runs of another seed or rate do differ."""
  lm = model.DecoderLM(model.ModelConfig(vocab_size=32, attention='orthogonal', width=32,
                                         max_length=16, conv_kernel=3))
  task = tasks.Task('induction', 16, 32)
  budget = train.TrainConfig(steps=20, batch_size=8, learning_rate=3e-3, warmup_steps=5,
                             eval_every=10, eval_examples=16)
  runs = [train.Run(0, 3e-3), train.Run(1, 3e-3), train.Run(0, 1e-3)]
  records, stacked = train.train_group(lm, task, budget, runs, log=lambda line: None)
  assert len(records) == 3
  for i, run_ in enumerate(runs):
    alone, variables = train.train(lm, task, dataclasses.replace(
        budget, learning_rate=run_.learning_rate), run_.seed, log=lambda line: None)
    grouped = records[i]
    assert grouped['curve']['steps'] == alone['curve']['steps'] == [10, 20]
    np.testing.assert_allclose(grouped['curve']['accuracy'], alone['curve']['accuracy'],
                               atol=1e-6)
    np.testing.assert_allclose(grouped['loss'], alone['loss'], rtol=1e-4)
    np.testing.assert_allclose(grouped['grad_norm'], alone['grad_norm'], rtol=1e-4)
    for name, trace in alone['grad_norm_module_peaks'].items():
      np.testing.assert_allclose(grouped['grad_norm_module_peaks'][name], trace, rtol=1e-4)
    assert set(variables) == set(stacked) == {'params', 'frozen'}
    for ours, theirs in zip(jax.tree.leaves(stacked), jax.tree.leaves(variables)):
      np.testing.assert_allclose(ours[i], theirs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        train.group_accuracy_at(lm, stacked, task, [r.seed for r in runs], budget, 32)[i],
        train.held_out_accuracy_at(lm, variables, task, run_.seed, budget, 32), atol=1e-6)
  assert records[0]['loss'][0] != records[1]['loss'][0]  # another seed: other data and weights
  assert records[0]['loss'][0] == records[2]['loss'][0]  # the rate acts from the first update
  assert records[0]['loss'][-1] != records[2]['loss'][-1]


def test_each_chunk_line_ends_with_the_time_left_of_the_run():
  """The first chunk compiles, so it gives no rate ('ETA ?'); later chunks give the time left at
  the rate since then, 0 at the last."""
  lm = model.DecoderLM(model.ModelConfig(vocab_size=32, attention='vanilla', width=32,
                                         max_length=16))
  budget = train.TrainConfig(steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=5,
                             eval_every=10, eval_examples=8)
  lines = []
  train.train(lm, tasks.Task('induction', 16, 32), budget, seed=0, label='[1/2] run',
              log=lines.append)
  assert [line.split('  ')[0] for line in lines] == [
      '[1/2] run step 10/30', '[1/2] run step 20/30', '[1/2] run step 30/30']
  assert re.fullmatch(r'.*  \d+s, ETA \?', lines[0])
  assert re.fullmatch(r'.*  \d+s, ETA \d+s', lines[1]) and lines[2].endswith(', ETA 0s')


def test_answer_metrics_equal_a_numpy_reading_of_the_full_logits():
  lm = tiny_model('vanilla')
  batch = TASK.generate(jax.random.key(3), 8)
  variables = nn.unbox(lm.init(jax.random.key(0), batch['inputs']))
  loss, accuracy = train.answer_metrics(train.answer_logits(lm, variables, batch), batch)
  full = np.asarray(lm.apply(variables, batch['inputs']), np.float64)
  mask, targets = np.asarray(batch['loss_mask']), np.asarray(batch['targets'])
  log_probs = full - np.log(np.exp(full).sum(-1, keepdims=True))
  picked = np.take_along_axis(log_probs, targets[:, :, None], -1)[:, :, 0]
  np.testing.assert_allclose(loss, -(picked * mask).sum() / mask.sum(), rtol=1e-5)
  correct = full.argmax(-1) == targets
  assert mask.sum() > 8 and accuracy == pytest.approx((correct * mask).sum() / mask.sum())
