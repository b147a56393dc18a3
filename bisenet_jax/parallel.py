"""Where the work runs: process start-up, the device mesh, shardings and global batches.

Data parallelism over every device of every process: a 1-D mesh with one axis, ``'data'``.
Batches are split along it and parameters replicated, so under ``jax.jit`` every reduction over
the batch (BatchNorm statistics, the loss, gradients) is global.

Every entry point calls ``setup()`` before JAX creates its devices. It connects the processes
of a multi-process launch and prepares XLA's CPU runtime for several devices:

* **Launches** (``launch_from_environment``): SLURM (``srun``), TPU pod slices and Open MPI
  are detected by ``jax.distributed.initialize()`` itself. Any other launcher sets, for every
  process, ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``, which are read here and passed on (JAX itself reads only the first).
* **CPU collectives**: several processes on CPUs (tests, a workstation) exchange data through
  gloo, so they form one mesh without a cluster.
* **Collective order on CPU**: XLA:CPU's concurrency-optimized scheduler lets the threads of
  different devices start independent all-reduces (e.g. the gradients of two layers) in
  different orders; each all-reduce waits for every device, so a training step on 4 or 8
  CPU devices deadlocked. With several CPU devices ``setup()`` turns that scheduler off
  (``CPU_COLLECTIVE_ORDER_FLAG``), which makes every device issue collectives in program
  order. One device keeps it: there it makes the step about 1.8x faster.
* **A lost peer**: when a process dies, its peers stop too instead of waiting forever: at
  once if they were inside a collective with it (the training loop reports ``PeerLost``), or
  when the coordination service misses its heartbeats for ``heartbeat_timeout()`` seconds
  (default 60, ``BISENET_HEARTBEAT_TIMEOUT`` to change), after which JAX ends the process with
  "Terminating process because the JAX distributed service detected fatal errors". A process
  whose peers never start is ended the same way after ``INITIALIZATION_TIMEOUT_S``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bisenet_jax.errors import UserError

DATA_AXIS = 'data'
CPU_COLLECTIVE_ORDER_FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler=false'
HEARTBEAT_TIMEOUT_ENV = 'BISENET_HEARTBEAT_TIMEOUT'
DEFAULT_HEARTBEAT_TIMEOUT_S = 60
# How long a process waits for all the others to start before JAX ends it (JAX's default).
INITIALIZATION_TIMEOUT_S = 300
_EXPLICIT_LAUNCH_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


class PeerLost(UserError):
  """Another process of a multi-process run stopped; this one cannot go on."""


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process was started. ``explicit`` holds the generic launcher's three values."""
  kind: str  # 'single', 'cluster' (detected by JAX: SLURM, TPU pod, Open MPI) or 'explicit'.
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def launch_from_environment(env: Mapping[str, str] = os.environ) -> Launch:
  """Reads how this process was launched from its environment variables.

  Raises:
    UserError: ``JAX_COORDINATOR_ADDRESS`` is set without a valid process count and id.
  """
  if env.get('JAX_COORDINATOR_ADDRESS'):
    missing = [name for name in _EXPLICIT_LAUNCH_ENV if not env.get(name)]
    if missing:
      raise UserError(f'JAX_COORDINATOR_ADDRESS is set but {" and ".join(missing)} is not: set '
                      'all three of ' + ', '.join(_EXPLICIT_LAUNCH_ENV) + ' for every process.')
    try:
      count, index = int(env['JAX_NUM_PROCESSES']), int(env['JAX_PROCESS_ID'])
    except ValueError:
      count = index = -1
    if not 0 <= index < count:
      raise UserError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                      f"{env['JAX_PROCESS_ID']!r} must be integers with 0 <= id < count.")
    return Launch('explicit', env['JAX_COORDINATOR_ADDRESS'], count, index)
  several = (int(env.get('SLURM_NTASKS', '1')) > 1 or ',' in env.get('TPU_WORKER_HOSTNAMES', '')
             or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)
  return Launch('cluster' if several else 'single')


def heartbeat_timeout(env: Mapping[str, str] = os.environ) -> int:
  """Seconds without a heartbeat after which a process counts as dead (``BISENET_...``)."""
  text = env.get(HEARTBEAT_TIMEOUT_ENV, str(DEFAULT_HEARTBEAT_TIMEOUT_S))
  if not text.isdigit() or int(text) < 1:
    raise UserError(f'{HEARTBEAT_TIMEOUT_ENV}={text!r} must be a positive number of seconds.')
  return int(text)


def forced_cpu_device_count(xla_flags: str) -> int:
  """The CPU device count that ``--xla_force_host_platform_device_count`` asks for (1 if unset)."""
  match = re.search(r'--xla_force_host_platform_device_count=(\d+)', xla_flags)
  return int(match.group(1)) if match else 1


def _add_xla_flag(flag: str) -> None:
  name = flag.split('=')[0]
  flags = os.environ.get('XLA_FLAGS', '')
  if name not in flags:  # A value the user set stays.
    os.environ['XLA_FLAGS'] = f'{flags} {flag}'.strip()


def setup(distributed: str = 'auto') -> Launch:
  """Starts this process's part of the run; call it before anything uses a JAX device.

  Args:
    distributed: 'auto' connects to the other processes when a multi-process launch is
      detected, 'yes' always calls ``jax.distributed.initialize()`` (JAX then detects the
      cluster itself), 'no' never does.

  Returns:
    The launch that was detected.
  """
  if distributed not in ('auto', 'yes', 'no'):
    raise UserError(f"distributed must be 'auto', 'yes' or 'no', got {distributed!r}.")
  launch = launch_from_environment() if distributed != 'no' else Launch('single')
  if distributed == 'yes' and launch.kind == 'single':
    launch = Launch('cluster')
  several_processes = launch.kind != 'single'
  if several_processes or forced_cpu_device_count(os.environ.get('XLA_FLAGS', '')) > 1:
    _add_xla_flag(CPU_COLLECTIVE_ORDER_FLAG)
  if several_processes:
    # Only used when the devices are CPUs; GPU and TPU runs keep their own collectives.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=launch.coordinator_address, num_processes=launch.num_processes,
        process_id=launch.process_id, heartbeat_timeout_seconds=heartbeat_timeout(),
        initialization_timeout=INITIALIZATION_TIMEOUT_S)
  return launch


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: every device of every process).

  Raises:
    UserError: the mesh spans several CPU devices but XLA's CPU runtime was started without
      ``CPU_COLLECTIVE_ORDER_FLAG`` (``setup()`` was not called first), so it could deadlock.
  """
  devices = jax.devices() if devices is None else list(devices)
  if (len(devices) > 1 and devices[0].platform == 'cpu' and
      CPU_COLLECTIVE_ORDER_FLAG.split('=')[0] not in os.environ.get('XLA_FLAGS', '')):
    raise UserError(
        f'{len(devices)} CPU devices need XLA_FLAGS to contain {CPU_COLLECTIVE_ORDER_FLAG} '
        '(otherwise their collectives can deadlock): call bisenet_jax.parallel.setup() before '
        'using JAX, or add the flag to XLA_FLAGS.')
  return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis; the rest of each array whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def to_global(mesh: Mesh, local_batch: dict) -> dict:
  """This process's rows (NumPy) -> global arrays sharded along the batch over ``mesh``.

  Process p's rows become rows ``[p * L, (p + 1) * L)`` of the global batch, in order, when
  the mesh lists each process's devices together (``jax.devices()`` does).
  """
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in local_batch.items()}


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in order (NumPy)."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])
