"""Reading and writing PyTorch ``.pth`` files as dicts of NumPy arrays (torch imported lazily)."""

from __future__ import annotations

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


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a state dict from a ``.pth``: a bare one, or under ``model`` / ``state_dict``.

  A ``module.`` prefix (DataParallel / DDP) is removed. Other top-level entries of a training
  checkpoint (``optimizer``, ``cur_epoch``, ...) are ignored. Tensors become NumPy arrays.
  """
  torch = _torch()
  path = Path(path)
  if not path.is_file():
    raise UserError(f'{path} does not exist; pass the path of a PyTorch .pth file.')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # Pickle, zip and torch errors all mean: not a usable checkpoint.
    raise UserError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: '
                    f'{str(e).splitlines()[0][:200]}).') from e
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


def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> Path:
  """Saves ``{'model': state_dict}`` (the published model-zoo layout) atomically."""
  torch = _torch()
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tensors = {'model': {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}}
  return write_atomically(path, lambda temporary: torch.save(tensors, temporary),
                          remedy='choose a writable --output')
