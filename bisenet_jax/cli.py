"""What every command-line entry point shares: one-line errors, the multi-process flag."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from typing import Callable

from bisenet_jax.errors import UserError


def user_errors_exit(main: Callable) -> Callable:
  """Runs ``main``; a ``UserError`` prints ``error: <message>`` on stderr and exits with 2.

  In a multi-process run any failure ends the process at once (``os._exit``): JAX's orderly
  shutdown would wait for the other processes, which may be blocked in a collective waiting
  for this one. Ended abruptly, its peers see the lost connection and stop too.
  """

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      _exit(2)
    except Exception:
      if not _in_multiprocess_run():
        raise
      traceback.print_exc()
      _exit(1)

  return wrapper


def _in_multiprocess_run() -> bool:
  jax = sys.modules.get('jax')  # Not imported here: some entry points run without JAX.
  return jax is not None and jax.distributed.is_initialized()


def _exit(code: int) -> None:
  if _in_multiprocess_run():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def add_distributed_argument(parser: argparse.ArgumentParser) -> None:
  """``--distributed auto|yes|no``, the argument of ``parallel.setup``."""
  parser.add_argument(
      '--distributed', choices=['auto', 'yes', 'no'], default='auto',
      help="connect the processes of a multi-process launch: 'auto' (default) when SLURM, a TPU "
      'pod slice, Open MPI or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID '
      'are detected')
