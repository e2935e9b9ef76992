"""One process of a synth-jax run of several processes on this machine's CPU (test_multihost.py).

  python tests/multihost_process.py DEVICES synth-jax ARGUMENTS...

Splits the CPU into DEVICES jax devices (before jax loads), registers `SCORED_COPY_TASK`, then
runs `synth_jax.cli.main(ARGUMENTS)` as `synth-jax` would, reporting what the test checks: each
step's loss at full precision (`process I step S loss L`) and which process writes the run config.
The coordination comes from the arguments (`--coordinator_address`, ...), as for a user.
LINGER=S:FILE in the environment makes every process wait, after reporting step S, until FILE
exists (at most 120 s), so a signal the test sends before it writes FILE surely arrives while
step S is under way, however late the test sends it.
"""
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCORED_COPY_TASK = 'synth_jax_test_copy_scored'


def exact_match(targets, predictions) -> dict[str, float]:
  return {'exact_match': 100.0 * sum(t == p for t, p in zip(targets, predictions)) /
                         max(len(targets), 1)}


def register_scored_copy_task() -> str:
  """The tests' copy task with a metric, so that evaluating decodes (seqio's Evaluator).
  Idempotent."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  if SCORED_COPY_TASK not in seqio.TaskRegistry.names():
    copy = seqio.get_mixture_or_task(fixtures.register_copy_task())
    seqio.TaskRegistry.add(SCORED_COPY_TASK, source=copy.source,
                           preprocessors=copy.preprocessors,
                           output_features=copy.output_features, metric_fns=[exact_match])
  return SCORED_COPY_TASK


def main(devices: str, argv: list[str]) -> int:
  os.environ['JAX_PLATFORMS'] = 'cpu'
  sys.path.insert(0, REPO)
  from tests import fast_compile  # pylint: disable=g-import-not-at-top
  os.environ['XLA_FLAGS'] = ' '.join((f'--xla_force_host_platform_device_count={devices}',
                                      *fast_compile.XLA_FLAGS))
  from synth_jax import collector, quiet_tensorflow  # pylint: disable=g-import-not-at-top
  with collector.paused():
    quiet_tensorflow.load()
    import jax  # pylint: disable=g-import-not-at-top
    from synth_jax import cli, run_config, train  # pylint: disable=g-import-not-at-top
  register_scored_copy_task()

  linger_step, _, linger_file = (os.environ.get('LINGER') or '0:').partition(':')

  def report_loss(step, metrics):
    print(f'process {jax.process_index()} step {step} loss {metrics["loss"]!r}', flush=True)
    if step == int(linger_step):
      deadline = time.monotonic() + 120
      while not os.path.exists(linger_file) and time.monotonic() < deadline:
        time.sleep(0.02)

  class ReportingMetrics(train._StepMetrics):  # pylint: disable=protected-access
    def __init__(self, manager, on_step):
      super().__init__(manager, on_step or report_loss)

  write = run_config.write

  def reporting_write(*args, **kwargs):
    print(f'process {jax.process_index()} writes the run config', flush=True)
    return write(*args, **kwargs)

  train._StepMetrics = ReportingMetrics  # pylint: disable=protected-access
  run_config.write = reporting_write
  return cli.main(argv)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1], sys.argv[2:]))
