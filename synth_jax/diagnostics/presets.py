"""Presets: one model, one training budget and one setting per task, shared by every variant.

  tiny  a laptop CPU in minutes (the tests use it): 2 layers, width 64, length 32, 300 steps of
        batch 32 (about 15 s a run on 2 cores, most of it compiling). At that budget vanilla
        solves MQAR and induction; overwrite and selective copy need more than it gives.
  full  the research sweep for one GPU (Zoology's scale: vocabulary 8192, length 256), split into
        parts of `jobs_per_part` runs (`synth-jax diagnose --preset full --part N`); MQAR is swept
        over kv pairs and width. Measured on the H200 (2026-12-01): twelve processes sharing the
        GPU, each taking the next one-run part (`--jobs_per_part 1 --skip_done --no-draw`), finish
        about 65 runs in a 9-minute call with JAX's persistent compilation cache shared among them
        (a run compiling afresh takes about 115 s, one whose program another rate or seed compiled
        about 65 s; without the cache, about 30 runs a call); docs/history/RESULTS-2026-12-01.md has
        the scripts. The learning rate, 5e-3, is the best single rate of 1e-3, 2e-3 and 5e-3 in a
        probe of all 13 variants on MQAR and induction with the scale in the logits (2026-12-01): it
        solves the most runs, and at 1e-3 nothing leaves the loss plateau within the 2000 steps
        (docs/history/RESULTS-2026-12-01.md has the table; `synth-jax diagnose-compare` makes it).

Both use a short causal convolution before attention (Zoology's hybrid block): with the previous
token in the residual stream, one attention layer can do recall, so what a variant's attention
can or cannot match decides the result in a few hundred steps.
"""
import dataclasses
from typing import Optional

from synth_jax.diagnostics import tasks
from synth_jax.diagnostics import train


@dataclasses.dataclass(frozen=True)
class Preset:
  """Attributes:
    name: 'tiny' or 'full'.
    model: `model.ModelConfig` fields other than vocab_size, attention and max_length (those
      come from the task), e.g. width, num_layers, positions, conv_kernel.
    train: the training budget of every run.
    tasks: name -> the task at its training length (`extrapolation` names the task it trains).
    extrapolation_factors: evaluation lengths of the extrapolation task, in training lengths.
    kv_pairs_sweep: MQAR's `num_kv_pairs` values (Zoology's x axis); () for none.
    width_sweep: model widths for MQAR at `width_sweep_kv_pairs`; () for none.
    jobs_per_part: runs per `--part`; 0 runs everything as one part.
  """
  name: str
  model: dict
  train: train.TrainConfig
  tasks: dict
  extrapolation_factors: tuple = (2, 4)
  kv_pairs_sweep: tuple = ()
  width_sweep: tuple = ()
  width_sweep_kv_pairs: Optional[int] = None
  jobs_per_part: int = 0


def _tasks(length: int, vocab_size: int, kv_pairs: int, copy_tokens: int,
           extrapolate: str) -> dict:
  recall = {'num_kv_pairs': kv_pairs}
  return {
      'mqar': tasks.Task('mqar', length, vocab_size, recall),
      'induction': tasks.Task('induction', length, vocab_size),
      'selective_copy': tasks.Task('selective_copy', length, vocab_size,
                                   {'num_tokens': copy_tokens}),
      'overwrite': tasks.Task('overwrite', length, vocab_size, {'num_kv_pairs': kv_pairs // 2}),
      'extrapolation': tasks.Task(extrapolate, length, vocab_size,
                                  recall if extrapolate == 'mqar' else {}),
  }


PRESETS = {
    'tiny': Preset(
        name='tiny',
        model=dict(width=64, num_layers=2, num_heads=2, positions='relative', conv_kernel=3,
                   fold_query_scale=False),
        train=train.TrainConfig(steps=300, batch_size=32, learning_rate=6e-3, warmup_steps=30,
                                eval_every=50, eval_examples=128),
        # MQAR extrapolates here: induction at 4L would need more distinct tokens than 64.
        tasks=_tasks(length=32, vocab_size=64, kv_pairs=6, copy_tokens=4, extrapolate='mqar'),
    ),
    'full': Preset(
        name='full',
        model=dict(width=128, num_layers=2, num_heads=2, positions='relative', conv_kernel=3,
                   fold_query_scale=False),
        train=train.TrainConfig(steps=2000, batch_size=64, learning_rate=5e-3, warmup_steps=100,
                                eval_every=100, eval_examples=512),
        tasks=_tasks(length=256, vocab_size=8192, kv_pairs=32, copy_tokens=16,
                     extrapolate='induction'),
        kv_pairs_sweep=(4, 8, 16, 32, 64),
        width_sweep=(32, 64, 128, 256),
        width_sweep_kv_pairs=64,
        jobs_per_part=10,
    ),
}


def get(name: str, **model_overrides) -> Preset:
  """The preset `name`, its model fields replaced by the non-None `model_overrides`."""
  if name not in PRESETS:
    raise ValueError(f'unknown preset {name!r}; presets: {", ".join(PRESETS)}.')
  preset = PRESETS[name]
  overrides = {k: v for k, v in model_overrides.items() if v is not None}
  return dataclasses.replace(preset, model={**preset.model, **overrides})
