"""Reading and writing PyTorch ``.pth`` files as dicts of NumPy arrays (torch imported lazily).

Unpickling a training checkpoint takes seconds (its optimizer state included), so a caller that
asks several questions of one file opens it once (``open_file``) and passes the ``OpenedFile``
where a path goes: every reader here takes either.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from bisenet_jax.errors import UserError
from bisenet_jax.files import write_atomically


def _torch():
  try:
    import torch
  except ImportError as e:
    raise UserError('Reading .pth files needs PyTorch: pip install "bisenet-jax[torch]" '
                    '(install the torch wheel you want first, e.g. the CPU build).') from e
  return torch


@dataclasses.dataclass(frozen=True, eq=False)
class OpenedFile(os.PathLike):
  """A ``.pth`` read once: its path (what ``os.fspath`` and ``str`` give, e.g. for ``Path`` or
  messages) and what ``torch.load`` returned."""
  path: Path
  contents: object = dataclasses.field(repr=False)

  def __fspath__(self) -> str:
    return os.fspath(self.path)

  def __str__(self) -> str:
    return str(self.path)


def open_file(path: str | os.PathLike) -> OpenedFile:
  """Reads a ``.pth`` (an ``OpenedFile`` is returned as it is)."""
  if isinstance(path, OpenedFile):
    return path
  return OpenedFile(Path(path), _load(Path(path)))


def _contents(path: str | os.PathLike):
  return path.contents if isinstance(path, OpenedFile) else _load(Path(path))


def _load(path: Path):
  torch = _torch()
  if not path.is_file():
    raise UserError(f'{path} does not exist; pass the path of a PyTorch .pth file.')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # Pickle, zip and torch errors all mean: not a usable checkpoint.
    raise UserError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: '
                    f'{str(e).splitlines()[0][:200]}).') from e


def has_entry(path: str | os.PathLike, entry: str) -> bool:
  """Whether a ``.pth`` (or ``OpenedFile``) holds a top-level ``entry`` (e.g. sssegmentation's
  ``model_ema``)."""
  obj = _contents(path)
  return isinstance(obj, Mapping) and isinstance(obj.get(entry), Mapping)


def read_state_dict(path: str | os.PathLike, entry: str | None = None) -> dict[str, np.ndarray]:
  """Loads a state dict from a ``.pth`` (or ``OpenedFile``): a bare one, or under ``model`` /
  ``state_dict``, or under ``entry`` when given (e.g. ``model_ema``, which sssegmentation's EMA
  writes).

  A ``module.`` prefix (DataParallel / DDP) is removed. Other top-level entries of a training
  checkpoint (``optimizer``, ``cur_epoch``, ...) are ignored. Tensors become NumPy arrays.
  """
  torch = _torch()
  obj = _contents(path)
  path = Path(path)
  if entry is not None:
    if not (isinstance(obj, Mapping) and isinstance(obj.get(entry), Mapping)):
      raise UserError(f'{path} has no {entry!r} entry (it was trained without EMA): drop --ema')
    obj = obj[entry]
  for wrapper in ('model', 'state_dict'):
    if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
      obj = obj[wrapper]
      break
  tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(
      obj, Mapping) else {}
  if not tensors:
    raise UserError(f'{path} holds no state dict (expected tensors at the top level or under '
                    "'model' or 'state_dict').")
  if all(k.startswith('module.') for k in tensors):
    tensors = {k[len('module.'):]: v for k, v in tensors.items()}
  return {k: v.detach().cpu().numpy() for k, v in tensors.items()}


def write_state_dicts(state_dicts: Mapping[str, Mapping[str, np.ndarray]],
                      path: str | os.PathLike) -> Path:
  """Saves ``{'model': state_dict, ...}`` (the published model-zoo layout; sssegmentation adds
  ``model_ema``) atomically."""
  torch = _torch()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {entry: {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
             for entry, state_dict in state_dicts.items()}
  return write_atomically(path, lambda temporary: torch.save(tensors, temporary),
                          remedy='choose a writable --output')
