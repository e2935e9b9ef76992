"""Idempotent registration of synth-jax tasks and mixtures with seqio.

Registering a name replaces whatever was registered under it, so importing
or reloading a task module never raises, and re-registering with another
vocabulary takes effect. Every name starts with `synth_jax_` so it cannot
collide with the `t5` package's tasks in the same process.
"""
from typing import Sequence, Tuple, Union

import seqio

PREFIX = 'synth_jax_'


def _check_name(name: str) -> None:
  if not name.startswith(PREFIX):
    raise ValueError(f'task and mixture names must start with {PREFIX!r} '
                     f'(t5 registers unprefixed names), got {name!r}.')


def register_task(task: seqio.Task) -> seqio.Task:
  """Adds `task` to `seqio.TaskRegistry` under `task.name`, replacing any."""
  _check_name(task.name)
  seqio.TaskRegistry.remove(task.name)
  seqio.TaskRegistry.add_provider(task.name, task)
  return task


def register_mixture(
    name: str, tasks: Sequence[Tuple[str, Union[int, float]]]
) -> seqio.Mixture:
  """Adds a mixture of registered tasks, replacing any of that name.

  Args:
    name: the mixture name.
    tasks: (task name, mixing rate) pairs; the tasks must be registered.

  Returns:
    The registered mixture.
  """
  _check_name(name)
  seqio.MixtureRegistry.remove(name)
  mixture = seqio.Mixture(name, list(tasks))
  seqio.MixtureRegistry.add_provider(name, mixture)
  return mixture
