"""Sizes: (height, width) everywhere, written HEIGHTxWIDTH wherever a person types or reads one.

One convention for every command, config key and printed line, the order NumPy and JAX index
an image in (``image.shape[:2]``).
"""

from __future__ import annotations

from typing import Sequence

from bisenet_jax.errors import UserError

Size = tuple[int, int]  # (height, width)
SIZE_FORMAT = 'HEIGHTxWIDTH'


def parse_size(text: str, flag: str) -> Size:
  """'1024x2048' -> (1024, 2048); ``flag`` names the option in the error message."""
  try:
    height, width = (int(part) for part in text.lower().split('x'))
  except ValueError:
    height = width = 0
  if height <= 0 or width <= 0:
    raise UserError(f'{flag} {text!r} is not a size: write {SIZE_FORMAT}, e.g. 1024x2048')
  return height, width


def check_size(value: Sequence[int], key: str) -> Size:
  """A (height, width) pair of positive integers from a config; a one-line error names ``key``."""
  if (len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
      or min(value) <= 0):
    raise UserError(f'{key}={tuple(value)} is not a size: give (height, width) as two positive '
                    f'integers, e.g. --{key}=(1024,1024)')
  return int(value[0]), int(value[1])


def format_size(size: Sequence[int]) -> str:
  """(1024, 2048) -> '1024x2048'."""
  return f'{size[0]}x{size[1]}'
