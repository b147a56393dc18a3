"""Stopping a run cleanly when the scheduler asks (SIGTERM): checkpoint first, then exit."""

from __future__ import annotations

import contextlib
import signal
from typing import Iterator


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[dict]:
  """While active, SIGTERM sets ``flag['stop']`` instead of killing: save, then exit."""
  flag = {'stop': False}

  def handler(signum, frame):
    flag['stop'] = True

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)
