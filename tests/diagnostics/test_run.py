"""`synth-jax diagnose`'s flags reach the budget they name."""
import pytest

from synth_jax.diagnostics import run


def test_batch_size_reaches_every_runs_budget(tmp_path):
  # The full preset evaluates 512 examples in batches of the training batch: 100 cannot divide
  # them, and TrainConfig says so, before anything trains.
  for preset in ('full', 'robust'):
    with pytest.raises(ValueError, match='multiple of batch_size=100'):
      run.main(['--preset', preset, '--attention', 'vanilla', '--batch_size', '100',
                '--out', str(tmp_path / preset)])
