"""SIGTERM (a TPU preemption notice) sent to a real trainer process: it saves the step under way
and exits at once, without evaluating or decoding."""
import os
import re
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every step evaluates and the end decodes, so a preempted run that did either would show it.
# Step 3's hook lingers, so the signal surely arrives while step 3 is under way.
TRAINER = """
import sys, time
from synth_jax import train
from tests import fixtures
def report(step, metrics):
  print(f'step {step} done', flush=True)
  if step == 3:
    time.sleep(2)
result = train.train(model_dir=sys.argv[1], model=fixtures.tiny_model(),
                     mixture_or_task_name=fixtures.register_copy_task(),
                     task_feature_lengths=fixtures.LENGTHS, batch_size=8, train_steps=1000,
                     log_period=1000, checkpoint_period=1000, eval_period=1, eval_steps=1,
                     infer_examples=3, on_step=report)
print(f'returned at step {result["step"]}', flush=True)
"""
# From the signal to the exit, on a loaded 2-core machine: the save (asynchronous; the trainer
# waits for it), releasing the lease and the interpreter's exit. Decoding three examples or
# evaluating would not fit comfortably; 25 steps more (the old behaviour) would not at all.
EXIT_BOUND_S = 30


def test_sigterm_saves_the_step_under_way_and_exits_within_the_bound(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '', 'PYTHONPATH': REPO}
  trainer = subprocess.Popen([sys.executable, '-c', TRAINER, str(tmp_path)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  before = []
  try:
    for line in trainer.stdout:
      before.append(line)
      if line.startswith('step 3 done'):
        break
    assert before and before[-1].startswith('step 3 done'), ''.join(before)
    trainer.send_signal(signal.SIGTERM)
    signalled = time.perf_counter()
    after, _ = trainer.communicate(timeout=EXIT_BOUND_S + 60)
    exited_s = time.perf_counter() - signalled
  finally:
    if trainer.poll() is None:
      trainer.kill()
      trainer.wait()
  output = ''.join(before) + after
  assert trainer.returncode == 0, output
  print(f'exited {exited_s:.1f} s after SIGTERM')
  assert exited_s < EXIT_BOUND_S, f'exited {exited_s:.1f} s after SIGTERM\n{output}'
  assert 'eval  step 2' in ''.join(before)  # evaluation was on, before the signal
  saved = int(re.search(r'SIGTERM: saved step (\d+)', after).group(1))
  assert 3 <= saved <= 3 + 1  # the last step printed before the signal, or the next one
  assert os.listdir(tmp_path / 'checkpoints') == [str(saved)]
  assert f'returned at step {saved}' in after
  assert 'eval  step' not in after and 'prediction:' not in after, after
