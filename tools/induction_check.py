"""A CPU check of vanilla's induction plateau at a middle scale
(docs/history/RESULTS-2026-12-01.md).

  python tools/induction_check.py ATTENTION LENGTH VOCAB STEPS POSITIONS RATE

The full preset's model (width 128, 2 layers, 2 heads, 3-tap convolution, the dot-product scale
in the logits) trained on induction at a smaller length and vocabulary: batch 32, 100 warmup
steps, seed 0. Prints held-out accuracy every 100 steps and the largest gradient norm; about
3 min a run on 2 cores. results/cpu-2026-12-01-induction-rate/output.txt holds the four
runs of 2026-12-01:
  vanilla 128 2048 1500 relative 0.005 | rotary ... 0.005 | vanilla ... none 0.005 |
  vanilla 128 2048 1500 relative 0.002
"""
import sys

from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import tasks
from synth_jax.diagnostics import train


def main(attention, length, vocab_size, steps, positions, learning_rate):
  length, vocab_size, steps = int(length), int(vocab_size), int(steps)
  task = tasks.Task('induction', length, vocab_size)
  config = model_lib.ModelConfig(vocab_size=vocab_size, attention=attention, width=128,
                                 num_layers=2, num_heads=2, max_length=length,
                                 positions=positions, conv_kernel=3)
  budget = train.TrainConfig(steps=steps, batch_size=32, learning_rate=float(learning_rate),
                             warmup_steps=100, eval_every=100, eval_examples=128)
  record, _ = train.train(model_lib.DecoderLM(config), task, budget, seed=0, log=lambda _: None)
  accuracy = [round(a, 2) for a in record['curve']['accuracy']]
  print(attention, 'induction', length, vocab_size, positions, learning_rate, 'acc', accuracy,
        f"maxgrad {max(record['grad_norm']):.2f}", f"secs {record['seconds']:.0f}", flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
