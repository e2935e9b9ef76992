"""Several processes as one trainer: joining them, agreeing on a preemption step, failing fast.

A multi-host TPU slice runs one process per host; on a CPU, several processes on one machine do
the same over loopback (gloo collectives), which is how the tests prove it. The processes meet
through `jax.distributed.initialize()`: on a TPU slice it discovers the coordinator, the process
count and each process's id by itself (`--multihost`); anywhere else they are given, by flags or
by environment variables:

  --coordinator_address=HOST:PORT   JAX_COORDINATOR_ADDRESS   process 0's address (it serves there)
  --num_processes=N                 JAX_NUM_PROCESSES
  --process_id=I                    JAX_PROCESS_ID            0 .. N-1, one per process

They are checked before anything is built (`coordination`), so a missing or bad value is one
line. Every process then runs the same program on its rows of each global batch (`data.py`).

SIGTERM goes to one process or to all: jax's preemption service (which catches it on every
process once `initialize` ran) names a step every process reaches, and all save that step
(`reached_preemption_step`). A process that dies leaves the others in a collective with it: gloo
reports the closed connection at once and the survivors exit (`exit_at_once`; when the dead one
is process 0, the coordinator, jax may end them first, as at once: "Terminating process because
the JAX distributed service detected fatal errors"); a process that hangs is declared dead after
`--heartbeat_timeout_s` and jax ends every other one so.
"""
import dataclasses
import os
import sys
from typing import Mapping, Optional

ADDRESS_VARIABLE = 'JAX_COORDINATOR_ADDRESS'  # jax.distributed.initialize reads it as well
PROCESSES_VARIABLE = 'JAX_NUM_PROCESSES'
PROCESS_ID_VARIABLE = 'JAX_PROCESS_ID'
# jax.distributed.initialize's default: after this long without a heartbeat a process is dead.
DEFAULT_HEARTBEAT_TIMEOUT_S = 100
# The exit status of a process whose peer died (2 is a user mistake, 1 an error of ours).
LOST_PEER_STATUS = 3
_EXAMPLE = ('e.g. --coordinator_address=10.0.0.2:8476 --num_processes=2 and --process_id=0 on the '
            'first host, --process_id=1 on the second')


class CoordinationError(ValueError):
  """A missing or bad coordinator address, process count or process id."""


@dataclasses.dataclass(frozen=True)
class Coordination:
  """How this process joins the others; `address` None: jax discovers all three (TPU slices)."""
  address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_TIMEOUT_S


def _integer(text: str, what: str, minimum: int, hint: str = _EXAMPLE) -> int:
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or value < minimum:
    raise CoordinationError(f'{what}={text!r} must be an integer >= {minimum}; {hint}.')
  return value


def _check_address(address: str) -> str:
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise CoordinationError(
        f'--coordinator_address={address!r} (or {ADDRESS_VARIABLE}) must be HOST:PORT, the '
        "address of process 0's host and a free port there, e.g. 127.0.0.1:8476 for processes on "
        'one machine.')
  return address


def coordination(address: Optional[str] = None, num_processes: Optional[str] = None,
                 process_id: Optional[str] = None, heartbeat_timeout_s: Optional[str] = None,
                 discover: bool = False,
                 environ: Optional[Mapping[str, str]] = None) -> Optional[Coordination]:
  """How this process joins the others (None: it runs alone), from the flags' values (strings,
  None when not given), else the environment variables of the same meaning.

  The three values come together or not at all; none with `discover` (`--multihost`, or a
  multi-host TPU slice) leaves them to jax's discovery. Raises `CoordinationError`, naming the
  flag, for a missing or bad value.
  """
  environ = os.environ if environ is None else environ
  given = {'--coordinator_address': address or environ.get(ADDRESS_VARIABLE) or None,
           '--num_processes': num_processes or environ.get(PROCESSES_VARIABLE) or None,
           '--process_id': process_id or environ.get(PROCESS_ID_VARIABLE) or None}
  timeout = (DEFAULT_HEARTBEAT_TIMEOUT_S if heartbeat_timeout_s is None else
             _integer(heartbeat_timeout_s, '--heartbeat_timeout_s', 1,
                      f'seconds (jax\'s default: {DEFAULT_HEARTBEAT_TIMEOUT_S})'))
  missing = [flag for flag, value in given.items() if value is None]
  if len(missing) == 3:
    return Coordination(heartbeat_timeout_s=timeout) if discover else None
  if missing:
    variables = {'--coordinator_address': ADDRESS_VARIABLE, '--num_processes': PROCESSES_VARIABLE,
                 '--process_id': PROCESS_ID_VARIABLE}
    raise CoordinationError(
        f'{" and ".join(missing)} (or {" and ".join(variables[m] for m in missing)}) missing: '
        'give --coordinator_address, --num_processes and --process_id together, '
        f'{_EXAMPLE}; or none of them on a TPU slice, where --multihost discovers them.')
  count = _integer(given['--num_processes'], '--num_processes', 1)
  index = _integer(given['--process_id'], '--process_id', 0)
  if index >= count:
    raise CoordinationError(f'--process_id={index} must be below --num_processes={count} (ids '
                            f'run 0 .. {count - 1}, one per process).')
  return Coordination(_check_address(given['--coordinator_address']), count, index, timeout)


def initialize(joining: Coordination):
  """`jax.distributed.initialize` with `joining`'s values (discovered where None); prints which
  process this is."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(
      coordinator_address=joining.address, num_processes=joining.num_processes,
      process_id=joining.process_id, heartbeat_timeout_seconds=joining.heartbeat_timeout_s)
  print(f'process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of '
        f'{jax.device_count()} devices here', flush=True)


def joined() -> bool:
  """Whether this process runs with others (`initialize` ran and found more than one)."""
  if 'jax' not in sys.modules:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  return jax.distributed.is_initialized() and jax.process_count() > 1


def reached_preemption_step(step: int) -> bool:
  """True at the step every process saves after a SIGTERM reached any of them (the same step on
  all; every process must call this at every step, from the same first step)."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.reached_preemption_sync_point(step)


# Words of the errors a collective or the coordination service raises when a peer is gone.
_LOST_PEER_SIGNS = ('gloo', 'connection closed by peer', 'connection reset', 'heartbeat',
                    'coordination service', 'socket closed', 'broken pipe')


def is_lost_peer(error: BaseException) -> bool:
  """Whether `error` is the runtime's (a collective's, the coordination service's) about a peer
  that is gone."""
  import jax  # pylint: disable=g-import-not-at-top
  text = str(error).lower()
  return (isinstance(error, jax.errors.JaxRuntimeError) and
          any(sign in text for sign in _LOST_PEER_SIGNS))


def lost_peer_message(error: BaseException) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
  return (f'process {jax.process_index()} of {jax.process_count()} lost another process ({first}):'
          ' it died, was killed or its host went away (its log says why). This process exits '
          'without saving; start every process again to resume from the last checkpoint.')


def exit_at_once(status: int):
  """Ends this process now, skipping jax's shutdown, which waits at a barrier for every process
  (a dead one never comes; the wait ends only at the heartbeat timeout, in a crash)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access
