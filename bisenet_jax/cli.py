"""What every command-line entry point shares: one-line errors for user mistakes."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from bisenet_jax.errors import UserError


def user_errors_exit(main: Callable) -> Callable:
  """Runs ``main``; a ``UserError`` prints ``error: <message>`` on stderr and exits with 2."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  return wrapper
