"""Checkpoints: those written before the attention redesign (e07cab6) restore into today's models;
a save under way finishes when training stops on an error."""
import os

import jax
import numpy as np
import pytest

from synth_jax import checkpoints
from synth_jax import optimizer as optimizer_lib
from synth_jax import partitioning
from synth_jax import train
from synth_jax import train_state
from tests import fixtures
from tests.data import make_checkpoints

OLD = os.path.join(os.path.dirname(__file__), 'data', 'checkpoints_e07cab6')


@pytest.mark.parametrize('attention_type', make_checkpoints.TYPES)
@pytest.mark.parametrize('execution', ['reference', 'fast'])
def test_old_checkpoints_restore_and_give_their_logits(attention_type, execution, tmp_path):
  model = fixtures.tiny_model(attention_type, attention_execution=execution)
  batch = make_checkpoints.fixed_batch()
  mesh = partitioning.create_mesh(1, devices=jax.devices()[:1])
  make_optimizer = lambda plan: optimizer_lib.adafactor(optimizer_lib.rsqrt_schedule(1.0, 100),
                                                        plan)
  state, shardings, _ = train_state.create(model, make_optimizer, batch, mesh, jax.random.key(1))
  directory = os.path.join(OLD, attention_type.replace('+', '_'))
  manager = checkpoints.Manager(directory, period=1, keep=None)
  assert manager.latest_step() == 2
  restored = manager.restore(state, shardings)
  assert int(restored.step) == 2
  # Every parameter and frozen array came from the file: none kept the fresh init.
  for fresh, old in zip(jax.tree.leaves((state.params, state.frozen)),
                        jax.tree.leaves((restored.params, restored.frozen))):
    assert not np.array_equal(np.asarray(fresh), np.asarray(old))
  logits = model.apply(restored.variables(), **train_state.model_inputs(batch),
                       enable_dropout=False)
  # Padding targets' logits are arbitrary (no query attends from them; the loss skips them).
  valid = batch['decoder_target_tokens'] > 0
  np.testing.assert_allclose(np.asarray(logits)[valid],
                             np.load(os.path.join(directory, 'logits.npy'))[valid],
                             rtol=1e-5, atol=1e-5)


def test_an_old_checkpoint_resumes_training(tmp_path):
  """A run started by e07cab6 continues under today's trainer from its step 2."""
  import shutil  # pylint: disable=g-import-not-at-top
  model_dir = tmp_path / 'run'
  shutil.copytree(os.path.join(OLD, 'vanilla'), model_dir)
  result = train.train(
      model_dir=str(model_dir), model=fixtures.tiny_model('vanilla'),
      mixture_or_task_name=fixtures.register_copy_task(), task_feature_lengths=fixtures.LENGTHS,
      batch_size=8, train_steps=3, log_period=100, checkpoint_period=3, eval_period=0,
      learning_rate=optimizer_lib.rsqrt_schedule(1.0, 100))
  assert result['step'] == 3
  assert np.isfinite(result['train']['loss'])


def test_a_save_under_way_finishes_when_training_stops_on_an_error(tmp_path):
  """The async write of a started save completes before the error leaves the `with` block."""
  state = {'weights': jax.numpy.arange(8 * 2**20, dtype=np.float32).reshape(2**13, 2**10)}
  with pytest.raises(RuntimeError, match='a step failed'):
    with checkpoints.Manager(str(tmp_path), period=1, keep=None) as manager:
      assert manager.maybe_save(1, state)
      raise RuntimeError('a step failed')
  assert os.listdir(tmp_path / 'checkpoints') == ['1']
  reread = checkpoints.Manager(str(tmp_path), period=1, keep=None)
  assert reread.latest_step() == 1
  restored = reread.restore(state, {'weights': state['weights'].sharding})
  np.testing.assert_array_equal(restored['weights'], state['weights'])


def test_an_error_of_a_run_of_several_processes_leaves_without_waiting(tmp_path, monkeypatch):
  """Finishing a save takes every process, and after an error one may be gone (a lost peer)."""
  manager = checkpoints.Manager(str(tmp_path), period=1, keep=None)
  waits = []
  monkeypatch.setattr(manager, 'wait', lambda: waits.append(True))
  monkeypatch.setattr(checkpoints.jax, 'process_count', lambda: 2)
  with pytest.raises(RuntimeError, match='a peer is gone'):
    with manager:
      raise RuntimeError('a peer is gone')
  assert not waits
  with manager:  # no error: the save under way finishes, as for one process
    pass
  assert waits == [True]
