"""Writing a file whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from bisenet_jax.errors import UserError


def write_atomically(path: str | os.PathLike, content: bytes | str | Callable[[Path], None],
                     remedy: str = 'choose a writable location') -> Path:
  """Writes ``content`` to a temporary file next to ``path`` and renames it over ``path``.

  A reader never sees a partial file, and a failed write leaves ``path`` as it was.

  Args:
    path: the file to write.
    content: the bytes or text to write, or a function that writes the file it is given.
    remedy: what the user should do when the file cannot be written, for the error message.

  Raises:
    UserError: the file cannot be written.
  """
  path = Path(path)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    try:
      if isinstance(content, bytes):
        temporary.write_bytes(content)
      elif isinstance(content, str):
        temporary.write_text(content)
      else:
        content(temporary)
      os.replace(temporary, path)
    finally:
      temporary.unlink(missing_ok=True)
  except OSError as e:
    raise UserError(f'Cannot write {path} ({e.strerror or e}): {remedy}') from e
  return path
