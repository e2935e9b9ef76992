"""What a training run prints and summarises as it goes: step throughput, and everything else
(compilation, evaluation, checkpoints) timed on its own so that it never inflates ms/step; the
time left of any long work (`eta`), and progress lines that a terminal rewrites in place (`show`).
"""
import contextlib
import os
import sys
import time
from typing import Callable, Mapping, Optional, TextIO


def duration(seconds: float) -> str:
  """'45s', '3m05s', '2h07m': short enough for a progress line."""
  seconds = max(0, round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  if seconds < 3600:
    return f'{seconds // 60}m{seconds % 60:02d}s'
  return f'{seconds // 3600}h{seconds // 60 % 60:02d}m'


def seconds_left(elapsed: float, done: float, total: float) -> Optional[float]:
  """The time `total - done` more units take at the rate of the `done` that took `elapsed`
  seconds; 0 once all are done, None before any is (no rate yet)."""
  if done >= total:
    return 0.0
  return elapsed / done * (total - done) if done > 0 else None


def left(elapsed: float, done: float, total: float) -> str:
  """'ETA 2m32s' from `seconds_left` ('ETA ?' before any unit is done)."""
  remaining = seconds_left(elapsed, done, total)
  return 'ETA ?' if remaining is None else f'ETA {duration(remaining)}'


def eta(elapsed: float, done: int, total: int) -> str:
  """'3/10 (30%), 1m05s elapsed, ETA 2m32s': units done of `total`, then the time left at the
  rate so far."""
  share = f' ({100 * done / total:.0f}%)' if total else ''
  return f'{done}/{total}{share}, {duration(elapsed)} elapsed, {left(elapsed, done, total)}'


def is_terminal(stream: Optional[TextIO] = None) -> bool:
  stream = sys.stdout if stream is None else stream
  return bool(getattr(stream, 'isatty', lambda: False)())


def show(text: str, keep: bool = True, stream: Optional[TextIO] = None):
  """Prints a progress line. On a terminal a line with `keep=False` is a status line: the next
  `show` rewrites it in place ('\r'); in a log (not a terminal) every line is a plain line."""
  stream = sys.stdout if stream is None else stream
  if is_terminal(stream):
    stream.write('\r' + text + '\x1b[K' + ('\n' if keep else ''))  # \x1b[K: clear to the end
  else:
    stream.write(text + '\n')
  stream.flush()


def status(text: str):
  """`show(text, keep=False)`: a `log` callable for per-chunk lines of a longer piece of work."""
  show(text, keep=False)


class Summaries:
  """TensorBoard scalars under `model_dir/{train,eval}` (a no-op without a model_dir)."""

  def __init__(self, model_dir: Optional[str]):
    self._writers = {}
    import jax  # pylint: disable=g-import-not-at-top (progress lines need no JAX)
    self._model_dir = model_dir if jax.process_index() == 0 else None

  def write(self, split: str, step: int, scalars: Mapping[str, float]):
    if not self._model_dir:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if split not in self._writers:
      self._writers[split] = tf.summary.create_file_writer(os.path.join(self._model_dir, split))
    with self._writers[split].as_default():
      for name, value in scalars.items():
        tf.summary.scalar(name, value, step=step)
    self._writers[split].flush()


class TrainProgress:
  """Every `period` steps and at the last: train metrics, ms/step and tokens/s, printed and
  summarised, and the time left to `train_steps` at the ms/step since the last line. Throughput
  counts training steps only: the first step of a run (which compiles the step) is reported on
  its own by `first_step_done`, and time spent inside `paused()` (evaluation, checkpoint saves)
  is left out, so the time left is that of the training steps (evaluations and saves add to it).
  The lines stay plain lines on a terminal too: they are the run's loss log.
  """

  def __init__(self, summaries: Summaries, period: int, train_steps: int, start: int,
               tokens_per_step: int, learning_rate: Callable):
    self._summaries, self._period, self._train_steps = summaries, period, train_steps
    self._tokens_per_step, self._learning_rate = tokens_per_step, learning_rate
    self._last_step, self._last_time, self._excluded = start, time.perf_counter(), 0.0

  def first_step_done(self, step: int):
    """Call once the run's first step has finished on the device (its metrics were read)."""
    seconds = time.perf_counter() - self._last_time
    print(f'step {step}: compiled the train step and ran it in {seconds:.1f} s (not counted in '
          'ms/step)', flush=True)
    self._last_step, self._last_time, self._excluded = step, time.perf_counter(), 0.0

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside is not training time."""
    begin = time.perf_counter()
    try:
      yield
    finally:
      self._excluded += time.perf_counter() - begin

  def is_due(self, step: int) -> bool:
    return step % self._period == 0 or step == self._train_steps

  def write(self, step: int, metrics: Mapping[str, float]):
    line = (f'step {step}/{self._train_steps}  loss {metrics["loss"]:.4f}  '
            f'acc {metrics["accuracy"]:.3f}')
    scalars = {**metrics, 'learning_rate': float(self._learning_rate(step - 1))}
    if step > self._last_step:
      now = time.perf_counter()
      step_time = (now - self._last_time - self._excluded) / (step - self._last_step)
      self._last_step, self._last_time, self._excluded = step, now, 0.0
      tokens_per_s = self._tokens_per_step / step_time
      scalars.update(step_time_s=step_time, tokens_per_s=tokens_per_s)
      line += f'  {tokens_per_s:,.0f} tok/s  {step_time * 1000:.0f} ms/step'
      line += f'  ETA {duration((self._train_steps - step) * step_time)}'
    self._summaries.write('train', step, scalars)
    print(line, flush=True)
