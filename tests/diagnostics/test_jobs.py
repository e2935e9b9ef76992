"""The runs of a request: which runs a request needs, shared runs, and parts."""
import pytest

from synth_jax.diagnostics import presets
from synth_jax.diagnostics import jobs


def ids(jobs):
  return [job.id for job in jobs]


def test_extrapolation_on_a_requested_task_setting_reuses_that_run():
  planned = jobs.plan(presets.get('tiny'), ['mqar', 'extrapolation'], ['vanilla', 'random'])
  assert ids(planned) == ['mqar/vanilla', 'mqar/random']
  assert all(job.groups == ('base', 'extrapolation') for job in planned)
  alone = jobs.plan(presets.get('tiny'), ['extrapolation'], ['vanilla'])
  assert ids(alone) == ['mqar/vanilla'] and alone[0].groups == ('extrapolation',)


def test_full_sweeps_share_the_points_they_have_in_common():
  full = presets.get('full')
  planned = jobs.plan(full, ['mqar'], ['vanilla'])
  assert ids(planned) == [
      'mqar/vanilla', 'mqar/kv=4/vanilla', 'mqar/kv=8/vanilla', 'mqar/kv=16/vanilla',
      'mqar/kv=64/vanilla', 'mqar/kv=64/width=32/vanilla', 'mqar/kv=64/width=64/vanilla',
      'mqar/kv=64/width=256/vanilla']
  by_id = {job.id: job for job in planned}
  assert by_id['mqar/vanilla'].groups == ('base', 'kv_pairs')  # kv 32 is the base setting
  assert by_id['mqar/kv=64/vanilla'].groups == ('kv_pairs', 'width')  # width 128 is the base
  assert by_id['mqar/kv=64/width=32/vanilla'].width == 32
  assert dict(by_id['mqar/kv=64/width=32/vanilla'].task.options) == {'num_kv_pairs': 64}


def test_parts_cover_the_plan_once_in_order():
  full = presets.get('full')
  planned = jobs.plan(full, ['mqar', 'induction', 'extrapolation'], ['vanilla', 'random', 'dense'])
  parts = jobs.parts(full, planned)
  assert len(parts) > 1 and all(len(p) <= full.jobs_per_part for p in parts)
  assert [job for part in parts for job in part] == planned


def test_preset_overrides_replace_model_fields_only_when_given():
  preset = presets.get('tiny', positions='learned', conv_kernel=None)
  assert preset.model['positions'] == 'learned'
  assert preset.model['conv_kernel'] == presets.PRESETS['tiny'].model['conv_kernel']
  assert preset.model['fold_query_scale'] is False  # AdamW: the scale goes in the logits
  assert presets.get('full', fold_query_scale=True).model['fold_query_scale'] is True
  with pytest.raises(ValueError, match='unknown preset'):
    presets.get('huge')
