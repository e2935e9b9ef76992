"""The runs of a diagnostics request: what each trains (`Job`), in which order and parts, and how
one run is trained, evaluated and described (`run_job`; groups of runs: `grid.py`).

A run is named by what it trains (`mqar/kv=8/random`), so one run serves every table that asks
for the same training: a sweep point equal to the base setting, or the extrapolation task when it
is a requested task's setting.
"""
import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from synth_jax.diagnostics import extrapolation
from synth_jax.diagnostics import model as model_lib
from synth_jax.diagnostics import presets
from synth_jax.diagnostics import statistics
from synth_jax.diagnostics import tasks as tasks_lib
from synth_jax.diagnostics import train as train_lib

STATISTICS_EXAMPLES = 8
# Groups a finished run serves without measuring anything more (`--skip_done` adds them).
TAG_ONLY_GROUPS = ('base', 'kv_pairs', 'width')


@dataclasses.dataclass(frozen=True)
class Job:
  """One training run: `task` learned by `variant` at model `width`; `groups` are the tables
  and plots it belongs to ('base', 'extrapolation', 'kv_pairs', 'width')."""
  id: str
  task: tasks_lib.Task
  variant: str
  width: int
  groups: tuple


def plan(preset: presets.Preset, task_names: Sequence[str], variants: Sequence[str]) -> list[Job]:
  """Every run the request needs, in order. Runs are named by what they train, so one run serves
  every group that asks for the same training: a sweep point equal to the base setting, or the
  extrapolation task when it is a requested task's setting."""
  jobs = {}
  base_width = preset.model['width']

  def add(task, width, group, tags):
    for variant in variants:
      job_id = '/'.join([task.name, *tags, variant])
      groups = jobs[job_id].groups + (group,) if job_id in jobs else (group,)
      jobs[job_id] = Job(job_id, task, variant, width, groups)

  def tags(task, base):
    """What sets `task` apart from `base`, e.g. ['kv=8'] (the run's name)."""
    differs = [(short, getattr(task, field)) for field, short in
               (('length', 'length'), ('vocab_size', 'vocab'))
               if getattr(task, field) != getattr(base, field)]
    differs += [('kv' if k == 'num_kv_pairs' else k, v) for k, v in task.options
                if dict(base.options).get(k) != v]
    return [f'{k}={v}' for k, v in differs]

  for name in task_names:
    task = preset.tasks[name]
    base = preset.tasks.get(task.name, task)
    add(task, base_width, 'extrapolation' if name == 'extrapolation' else 'base', tags(task, base))
    if name != 'mqar':
      continue
    for n in preset.kv_pairs_sweep:
      point = dataclasses.replace(task, options={'num_kv_pairs': n})
      add(point, base_width, 'kv_pairs', tags(point, task))
    for width in preset.width_sweep:
      point = dataclasses.replace(task, options={'num_kv_pairs': preset.width_sweep_kv_pairs})
      add(point, width, 'width',
          tags(point, task) + ([] if width == base_width else [f'width={width}']))
  return list(jobs.values())


def parts(preset: presets.Preset, jobs: list[Job]) -> list[list[Job]]:
  size = preset.jobs_per_part or len(jobs) or 1
  return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _statistics_tokens(task: tasks_lib.Task, seed: int):
  return task.generate(train_lib.stream(seed, train_lib.EVAL_STREAM), STATISTICS_EXAMPLES)['inputs']


def _statistics(maps, variables, num_heads: int) -> dict:
  return {'attention': statistics.attention_statistics(maps)['layers'],
          'projections': statistics.projection_spectra(
              variables['params'], variables.get('frozen'), num_heads)}


def measure_statistics(model, variables, task: tasks_lib.Task, seed: int) -> dict:
  """Per layer, entropy and head similarity of the trained model's attention on a few held-out
  examples; the spectra of its query/key projections (`statistics.py`)."""
  maps = model_lib.attention_probabilities(model, variables, _statistics_tokens(task, seed))
  return _statistics(maps, variables, model.config.num_heads)


def measure_statistics_group(model, variables, task: tasks_lib.Task,
                             seeds: Sequence[int]) -> list[dict]:
  """`measure_statistics` of every run of a group (`train.train_group`'s stacked variables)."""
  tokens = jnp.stack([_statistics_tokens(task, seed) for seed in seeds])
  maps = model_lib.group_attention_probabilities(model, variables, tokens)
  return [_statistics([layer[i] for layer in maps], jax.tree.map(lambda x: x[i], variables),
                      model.config.num_heads) for i in range(len(seeds))]


def build_model(job: Job, model_fields: dict, execution: str) -> model_lib.DecoderLM:
  """The diagnostic model of `job` with the preset's `model_fields` (its width replaced)."""
  config = model_lib.ModelConfig(
      vocab_size=job.task.vocab_size, attention=job.variant, max_length=job.task.length,
      **{**model_fields, 'width': job.width})
  return model_lib.DecoderLM(config, attention_execution=execution)


def job_description(job: Job) -> dict:
  """What a run trained, as its record's `job` field."""
  return {'task': job.task.name, 'variant': job.variant, 'width': job.width,
          'length': job.task.length, 'vocab_size': job.task.vocab_size,
          'options': dict(job.task.options), 'groups': list(job.groups)}


def run_job(job: Job, preset: presets.Preset, seed: int, execution: str, label: str) -> dict:
  model = build_model(job, preset.model, execution)
  record, variables = train_lib.train(model, job.task, preset.train, seed, label=label)
  if 'extrapolation' in job.groups:
    record['extrapolation'] = extrapolation.evaluate_lengths(
        model, variables, job.task, seed, preset.train, preset.extrapolation_factors)
  record['statistics'] = measure_statistics(model, variables, job.task, seed)
  record['job'] = job_description(job)
  return statistics.as_json(record)


def metadata(preset: presets.Preset, seed: int, execution: str) -> dict:
  device = jax.devices()[0]
  return statistics.as_json({
      'preset': preset.name, 'seed': seed, 'model': preset.model,
      'train': dataclasses.asdict(preset.train), 'attention_execution': execution,
      'extrapolation_factors': preset.extrapolation_factors,
      'device': f'{device.platform}: {device.device_kind}', 'jax': jax.__version__,
  })
