"""Tests for synth_jax/tasks/registration.py and the package's registry."""
import importlib

import pytest
import seqio

import synth_jax.tasks
from synth_jax.tasks import c4
from synth_jax.tasks import glue
from synth_jax.tasks import local_corpus
from synth_jax.tasks import registration
from synth_jax.tasks import superglue
from synth_jax.tasks import vocabularies

MODULES = (c4, glue, superglue, local_corpus)


def _our_names():
  """The package's registrations (tests register theirs as synth_jax_test_*)."""
  tasks = {n for n in seqio.TaskRegistry.names()
           if n.startswith('synth_jax') and not n.startswith('synth_jax_test_')}
  mixtures = {n for n in seqio.MixtureRegistry.names()
              if n.startswith('synth_jax')}
  return tasks, mixtures


def test_importing_registers_every_task_and_mixture():
  tasks, mixtures = _our_names()
  assert tasks == (
      {c4.TASK_NAME, local_corpus.TASK_NAME}
      | {glue.task_name(b) for b in glue.BENCHMARKS}
      | {superglue.task_name(b) for b in superglue.BENCHMARKS})
  assert mixtures == {'synth_jax_glue', 'synth_jax_super_glue'}


def test_reloading_the_modules_replaces_registrations_without_error():
  before = seqio.get_mixture_or_task('synth_jax_glue_cola')
  for module in MODULES + (synth_jax.tasks,):
    importlib.reload(module)
  after = seqio.get_mixture_or_task('synth_jax_glue_cola')
  assert after is not before
  assert _our_names()[0] >= {c4.TASK_NAME, 'synth_jax_glue_cola'}
  # The mixture refers to the new task objects.
  mixture = seqio.get_mixture_or_task('synth_jax_glue')
  assert seqio.get_mixture_or_task('synth_jax_glue_cola') in mixture.tasks


def test_names_without_the_prefix_are_rejected():
  task = local_corpus.span_corruption_task(name='local_span_corruption')
  with pytest.raises(ValueError, match='synth_jax_'):
    registration.register_task(task)
  assert 'local_span_corruption' not in seqio.TaskRegistry.names()


def test_register_all_swaps_the_vocabulary_of_every_pretrained_task():
  byte_vocab = vocabularies.byte_vocabulary()
  try:
    synth_jax.tasks.register_all(byte_vocab)
    for name in (c4.TASK_NAME, 'synth_jax_glue_mrpc',
                 'synth_jax_super_glue_record'):
      features = seqio.get_mixture_or_task(name).output_features
      assert features['inputs'].vocabulary is byte_vocab
  finally:
    synth_jax.tasks.register_all()
  features = seqio.get_mixture_or_task(c4.TASK_NAME).output_features
  assert isinstance(features['inputs'].vocabulary,
                    seqio.SentencePieceVocabulary)
