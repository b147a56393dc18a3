"""Writes tests/data/opencv4_golden.npz: what every OpenCV call of the data code gives on OpenCV 4.

The reference (sssegmentation) runs on OpenCV 4. The transforms' tests compare the project's
output under the installed OpenCV against this file, so an OpenCV release that changes a result
fails a test instead of silently changing the training data. Regenerate it only in an
environment with OpenCV 4 (it refuses otherwise):

  python -m venv /tmp/cv4 && /tmp/cv4/bin/pip install -e . 'opencv-python-headless>=4.8,<5'
  /tmp/cv4/bin/python tests/data/make_opencv4_golden.py

Normalisation is written here with the reference's own OpenCV calls (`cv2.subtract`,
`cv2.multiply` with float64 [1, 3] arguments), not with the project's code, since the project
no longer calls OpenCV for it. Everything else goes through the project's functions. Frames at
the reference's full size are stored as SHA-256 digests to keep the file small.
"""

import hashlib
from pathlib import Path

import cv2
import numpy as np

from bisenet_jax.data import normalization, synthetic, transforms

OUTPUT = Path(__file__).resolve().parent / 'opencv4_golden.npz'
# Image shapes for normalisation: single pixels, tiny, one pixel wide or tall, and ordinary.
NORMALIZE_SHAPES = ((1, 1), (3, 1), (1, 3), (3, 3), (1, 7), (7, 1), (4, 4), (16, 16))
# Resize scales on a small odd-sized frame (base size = its own size) and on a full frame.
SMALL_SCALES = (0.03, 0.05, 0.3, 0.7, 1.37, 2.0)  # 0.03: 1x1, 0.05: 3x2.
FULL_FRAME_SCALES = (0.7, 1.37)


def digest(array: np.ndarray) -> np.ndarray:
  return np.frombuffer(hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest(), np.uint8)


def reference_normalize(image: np.ndarray) -> np.ndarray:
  out = image.astype(np.float32)
  cv2.subtract(out, np.array(normalization.MEAN_RGB, np.float64).reshape(1, 3), out)
  cv2.multiply(out, 1 / np.array(normalization.STD_RGB, np.float64).reshape(1, 3),
               out)
  return out


def golden() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  out = {}
  every_value = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
  out['normalize/every_value/input'] = every_value
  out['normalize/every_value/output'] = reference_normalize(every_value)
  for height, width in NORMALIZE_SHAPES:
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    out[f'normalize/{height}x{width}/input'] = image
    out[f'normalize/{height}x{width}/output'] = reference_normalize(image)

  small = {'image': rng.integers(0, 256, (37, 53, 3), np.uint8),
           'label': rng.integers(0, 19, (37, 53), np.uint8)}
  out['resize/small/image'], out['resize/small/label'] = small['image'], small['label']
  for scale in SMALL_SCALES:
    resized = transforms.resize_keep_ratio(small, base_size=(53, 37), scale=scale)
    out[f'resize/small/{scale}/image'] = resized['image']
    out[f'resize/small/{scale}/label'] = resized['label']
  full = {'image': np.random.default_rng(1).integers(0, 256, (1024, 2048, 3), np.uint8),
          'label': np.random.default_rng(2).integers(0, 19, (1024, 2048), np.uint8)}
  for scale in FULL_FRAME_SCALES:
    resized = transforms.resize_keep_ratio(full, scale=scale)
    out[f'resize/full/{scale}/image_sha256'] = digest(resized['image'])
    out[f'resize/full/{scale}/label_sha256'] = digest(resized['label'])

  # Every 8-bit colour on a coarse grid, through both HSV conversions of the distortion.
  grid = np.stack(np.meshgrid(np.arange(256), np.arange(0, 256, 17), np.arange(0, 256, 17),
                              indexing='ij'), -1).reshape(-1, 1, 3).astype(np.uint8)
  out['hsv/input'] = grid
  out['hsv/to_hsv'] = transforms._to_hsv(grid)
  out['hsv/from_hsv'] = transforms._from_hsv(out['hsv/to_hsv'])

  # The synthetic demo's drawing, blur and texture (cv2 shapes and GaussianBlur).
  image, label_ids = synthetic.draw_street_scene(np.random.default_rng(3), 96, 192)
  out['synthetic/image_sha256'], out['synthetic/label_sha256'] = digest(image), digest(label_ids)
  return out


def main():
  if not cv2.__version__.startswith('4.'):
    raise SystemExit(f'OpenCV {cv2.__version__}: the golden outputs must come from OpenCV 4.')
  values = golden()
  np.savez_compressed(OUTPUT, opencv_version=np.array(cv2.__version__), **values)
  print(f'wrote {len(values)} arrays from OpenCV {cv2.__version__} to {OUTPUT}')


if __name__ == '__main__':
  main()
