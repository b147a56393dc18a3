"""Labelled files for the data tests: images, masks (grey or palette PNGs) and a tiny folder
dataset, plus the NumPy statement of how mask values become labels."""

import re

import cv2
import numpy as np
from PIL import Image

COLOURED_CLASSES = '# name R G B\nbackground 0 0 0\n\nroad surface 128 64 128\n  person 220 20 60\n'
THREE_CLASSES = ('background', 'road surface', 'person')


def write_image(path, height, width, seed=0, orientation=None):
  """Writes a random RGB image (format from the suffix), with an EXIF orientation if given.

  Returns the image as written, RGB.
  """
  image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  if orientation is not None:
    pil = Image.fromarray(image)
    tags = pil.getexif()
    tags[0x0112] = orientation
    pil.save(path, exif=tags)
  else:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  return image


def write_mask(path, values, palette=None, image_format=None):
  """Writes uint8 `values` as a grey PNG, or as a palette PNG when `palette` is given."""
  mask = Image.fromarray(np.asarray(values, np.uint8))
  if palette is not None:
    mask.putpalette(np.asarray(palette, np.uint8).tobytes())
    assert mask.mode == 'P'
  path.parent.mkdir(parents=True, exist_ok=True)
  mask.save(path, format=image_format)
  return path


def write_pair(root, name, values, split='val', image_suffix='.png', **mask_options):
  """Writes images/<split>/<name><suffix> and masks/<split>/<name>.png; returns their paths."""
  values = np.asarray(values, np.uint8)
  image_path = root / 'images' / split / f'{name}{image_suffix}'
  write_image(image_path, *values.shape)
  return image_path, write_mask(root / 'masks' / split / f'{name}.png', values, **mask_options)


def both(first, second):
  """A regex matching a message that names `first`, then `second`."""
  return re.escape(str(first)) + '.*' + re.escape(str(second))


def reference_labels(raw, num_classes, ignore_index=255, reduce_zero_label=False,
                     label_map=None):
  """What a mask should become, written directly in NumPy: (labels, refused mask)."""
  raw = raw.astype(np.int64)
  if label_map:
    labels = np.full(raw.shape, -1)
    for value, target in label_map.items():
      labels[raw == value] = target
  elif reduce_zero_label:
    labels = np.where(raw == 0, 255, raw - 1)
  else:
    labels = raw.copy()
  labels[raw == ignore_index] = 255
  refused = (labels < 0) | ((labels >= num_classes) & (labels != 255))
  if not label_map:  # without a map, only 0 (reduce_zero_label) and ignore_index become 255
    allowed_ignore = (raw == ignore_index) | ((raw == 0) & reduce_zero_label)
    refused |= (labels == 255) & ~allowed_ignore
  return np.where(refused, 255, labels).astype(np.uint8), refused


def write_folder_dataset(root):
  """A 3-class folder dataset with one 2x3 frame 'a' in 'val'; returns its root."""
  (root / 'classes.txt').write_text(COLOURED_CLASSES)
  write_pair(root, 'a', [[0, 1, 2], [255, 1, 0]])
  return root


def read_rgb(path):
  """A written image or mask file as uint8 RGB."""
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  assert image is not None, path
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
