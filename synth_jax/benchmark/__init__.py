"""Training-step benchmark of every attention type at T5-base v1.1 shapes (issue 6).

  python -m synth_jax.bench                              # all types, base, batch 128, packed
  python -m synth_jax.bench --types vanilla --fused cudnn
  python -m synth_jax.bench --types vanilla,random --seq_sweep --json sweep.json
  python -m synth_jax.bench --preset tiny --steps 2      # CPU smoke run, ~2 min on 2 cores

One row per attention type (set as encoder and decoder self-attention; cross-attention stays
vanilla, as in `gin/models/t5_1_1_base.gin`): the time of a whole training step
(`train_state.train_step`: forward, backward, Adafactor update) after warmup, tokens/s, the model
FLOPs of the step, MFU against the device's bf16 peak, and peak device memory. Batches are
synthetic random tokens laid out like `seqio.EncDecFeatureConverter`'s output, so nothing here
imports seqio or TensorFlow.

  flops.py    matmul FLOPs read off a traced step; the model FLOPs are those of the reference path
  batches.py  synthetic batches, packed or not
  runner.py   the presets (model sizes read from `gin/models/`); one row: build, compile, warm
              up, time, peak memory, profile
  report.py   the printed tables and the source digests of the JSON
  driver.py   the command: flags, one worker process per row, the JSON

`synth_jax/bench.py` is the `python -m synth_jax.bench` entry point; `synth-jax bench` runs the
same `driver.main`.
"""
