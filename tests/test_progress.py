"""Progress lines: ms/step and tokens/s count training steps only."""

from synth_jax import progress


class FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_step_time_leaves_out_the_first_step_and_paused_time(monkeypatch, capsys):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)
  log = progress.TrainProgress(progress.Summaries(None), period=10, train_steps=20, start=0,
                               tokens_per_step=1000, learning_rate=lambda step: 0.1)
  clock.now += 30.0  # step 1 compiles
  log.first_step_done(1)
  assert 'step 1: compiled the train step and ran it in 30.0 s' in capsys.readouterr().out
  clock.now += 9 * 0.5  # steps 2..10 at 0.5 s
  with log.paused():
    clock.now += 7.0  # an evaluation or a save
  log.write(10, {'loss': 1.0, 'accuracy': 0.5})
  line = capsys.readouterr().out
  assert line.startswith('step 10/20  loss 1.0000  acc 0.500')
  assert '500 ms/step' in line and '2,000 tok/s' in line
  clock.now += 10 * 0.25  # steps 11..20
  log.write(20, {'loss': 0.5, 'accuracy': 0.75})
  assert '250 ms/step' in capsys.readouterr().out


def test_a_log_at_the_first_step_has_no_throughput(capsys):
  log = progress.TrainProgress(progress.Summaries(None), period=1, train_steps=2, start=0,
                               tokens_per_step=10, learning_rate=lambda step: 0.1)
  log.first_step_done(1)
  capsys.readouterr()
  log.write(1, {'loss': 1.0, 'accuracy': 0.0})
  assert capsys.readouterr().out.strip() == 'step 1/2  loss 1.0000  acc 0.000'
