"""The images an export calibrates int8 activations on and checks its file against.

``--calibration`` names a folder of images, a split's folder, or a dataset root; a root's
training images are taken (Cityscapes ``leftImg8bit/train``, the folder layout's
``images/train``, VOC's ``JPEGImages``), never its label masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bisenet_jax.data.images import IMAGE_SUFFIXES
from bisenet_jax.errors import UserError

# Where a dataset root keeps the images to calibrate on, in order of preference.
_IMAGE_FOLDERS = ('leftImg8bit/train', 'leftImg8bit', 'images/train', 'images', 'JPEGImages')


def calibration_images(path: str | Path, count: int) -> list[Path]:
  """``count`` image files under ``path``, spread evenly over its sorted listing.

  Raises:
    UserError: ``path`` does not exist, holds no image, or ``count`` is not positive.
  """
  path = Path(path)
  if count < 1:
    raise UserError(f'--calibration-count {count} must be positive')
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise UserError(f'--calibration {path} does not exist: give a folder of images, a split or '
                    'a dataset root')
  folder = next((path / sub for sub in _IMAGE_FOLDERS if (path / sub).is_dir()), path)
  files = sorted(p for p in folder.rglob('*') if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not any(part.startswith('.') for part in p.relative_to(folder).parts))
  if not files:
    raise UserError(f'--calibration {path}: no {", ".join("*" + s for s in IMAGE_SUFFIXES)} files '
                    f'under {folder}')
  picks = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
  return [files[i] for i in picks]
