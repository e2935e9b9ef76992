"""Progress lines: ms/step and tokens/s count training steps only; the time left; status lines."""

import io

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


def test_eta_line_gives_done_of_total_the_elapsed_time_and_the_time_left():
  # 3 of 10 in 65 s: 7 more at 21.7 s each.
  assert progress.eta(65.0, 3, 10) == '3/10 (30%), 1m05s elapsed, ETA 2m32s'
  assert progress.eta(4.2, 0, 8) == '0/8 (0%), 4s elapsed, ETA ?'  # no rate yet
  assert progress.eta(7300.0, 4, 4) == '4/4 (100%), 2h01m elapsed, ETA 0s'
  assert progress.seconds_left(10.0, 2, 5) == 15.0 and progress.seconds_left(1.0, 0, 5) is None
  assert [progress.duration(s) for s in (0.4, 59.6, 61, 3599, 3600)] == [
      '0s', '1m00s', '1m01s', '59m59s', '1h00m']


def test_train_lines_end_with_the_time_left_at_the_recent_step_time(monkeypatch, capsys):
  clock = FakeClock()
  monkeypatch.setattr(progress.time, 'perf_counter', clock)
  log = progress.TrainProgress(progress.Summaries(None), period=10, train_steps=100, start=0,
                               tokens_per_step=1000, learning_rate=lambda step: 0.1)
  clock.now += 10 * 2.0  # 2 s a step: 90 steps left take 3 minutes
  log.write(10, {'loss': 1.0, 'accuracy': 0.5})
  assert capsys.readouterr().out.rstrip().endswith('2000 ms/step  ETA 3m00s')
  clock.now += 10 * 0.5  # the rate of the last window, not the average since the start
  log.write(20, {'loss': 1.0, 'accuracy': 0.5})
  assert capsys.readouterr().out.rstrip().endswith('500 ms/step  ETA 40s')


class Stream(io.StringIO):
  def __init__(self, terminal):
    super().__init__()
    self.terminal = terminal

  def isatty(self):
    return self.terminal


def test_status_lines_are_rewritten_in_place_on_a_terminal_and_plain_lines_in_a_log():
  terminal, log = Stream(True), Stream(False)
  for stream in (terminal, log):
    progress.show('run 1: step 50/100', keep=False, stream=stream)
    progress.show('run 1: step 100/100', keep=False, stream=stream)
    progress.show('run 1: done', stream=stream)
  assert terminal.getvalue() == ('\rrun 1: step 50/100\x1b[K\rrun 1: step 100/100\x1b[K'
                                 '\rrun 1: done\x1b[K\n')
  assert log.getvalue() == 'run 1: step 50/100\nrun 1: step 100/100\nrun 1: done\n'
