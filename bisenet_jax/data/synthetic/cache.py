"""Generated datasets on disk: written whole or not at all, and regenerated only when stale.

A dataset is written into a temporary sibling folder with a marker file (``synthetic.json``:
the generator version and every parameter) written last, then renamed into place, so a reader
never sees a partial copy and the marker's presence means complete.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import tempfile

from bisenet_jax.errors import UserError

MARKER = 'synthetic.json'
SPLITS = ('train', 'val')


def ensure(root, spec, version, write):
  """Returns `root`, first writing it with `write(root, **spec)` unless its marker matches."""
  if _read_marker(root) != _marker(version, spec):
    write(root, **dataclasses.asdict(spec))
  return root


def write_staged(root, version, spec, write_splits):
  """Writes a dataset with `write_splits(staging, spec)`, then its marker, and renames it to `root`.

  Raises:
    UserError: the files cannot be written there.
  """
  root = pathlib.Path(root)
  try:
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{root.name}.', dir=root.parent))
    try:
      write_splits(staging, spec)
      (staging / MARKER).write_text(json.dumps(_marker(version, spec), indent=2))
      _replace_dir(staging, root)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  except OSError as error:
    raise UserError(f'Cannot write the demo dataset to {root} ({error}): '
                    'choose a writable cache folder') from error
  return root


def _marker(version, spec):
  return {'generator_version': version, **dataclasses.asdict(spec)}


def _read_marker(root):
  try:
    return json.loads((root / MARKER).read_text())
  except (OSError, ValueError):
    return None


def _replace_dir(source, destination):
  """Renames `source` to `destination`; an old `destination` is moved aside first, then deleted."""
  if destination.exists():
    old = destination.with_name(f'.{destination.name}.old.{os.getpid()}')
    os.rename(destination, old)
    os.rename(source, destination)
    shutil.rmtree(old)
  else:
    os.rename(source, destination)
