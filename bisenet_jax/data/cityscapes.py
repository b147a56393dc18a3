"""Cityscapes: the project's one label table and a reader for the official folder layout.

The table is built from `cityscapesscripts.helpers.labels` (the dataset's own definition), so
reading, evaluation, prediction export and the palette cannot drift apart. Labels are kept as
uint8 trainIds with `IGNORE_LABEL` (255) for every id that is not one of the 19 evaluated
classes; the reference uses -100 on float labels for the same purpose (docs/reference.md §5.2).
"""

import pathlib

import cv2
import numpy as np
from cityscapesscripts.helpers import labels as cs_labels

from bisenet_jax.data.images import image_size, read_image
from bisenet_jax.data.records import describe_files
from bisenet_jax.errors import UserError

IGNORE_LABEL = 255
# Largest labelId in the official *_gtFine_labelIds.png files ('bicycle').
MAX_LABEL_ID = max(label.id for label in cs_labels.labels)

_TRAIN_LABELS = sorted(
    (label for label in cs_labels.labels if 0 <= label.trainId < IGNORE_LABEL),
    key=lambda label: label.trainId)

NUM_CLASSES = len(_TRAIN_LABELS)
CLASS_NAMES = tuple(label.name for label in _TRAIN_LABELS)
# Colour of each trainId, RGB uint8 [NUM_CLASSES, 3].
PALETTE = np.array([label.color for label in _TRAIN_LABELS], np.uint8)
# labelId of each trainId, uint8 [NUM_CLASSES]; maps predictions back for the test server.
TRAIN_ID_TO_LABEL_ID = np.array([label.id for label in _TRAIN_LABELS], np.uint8)
# Lookup table uint8 [256]: labelId -> trainId, IGNORE_LABEL for everything else.
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_LABEL, np.uint8)
LABEL_ID_TO_TRAIN_ID[TRAIN_ID_TO_LABEL_ID] = np.arange(NUM_CLASSES)

_IMAGE_SUFFIX = '_leftImg8bit.png'
_LABEL_SUFFIX = '_gtFine_labelIds.png'
_DEMO_HINT = 'to try the project without Cityscapes: python train.py --config configs/r18.py:demo'


class CityscapesFolder:
  """Random-access source over the official Cityscapes layout.

  Reads `<root>/leftImg8bit/<split>/<city>/<id>_leftImg8bit.png` and its label
  `<root>/gtFine/<split>/<city>/<id>_gtFine_labelIds.png`, in sorted order. It has `__len__`
  and `__getitem__`, so grain can use it directly, and it holds only paths, so it pickles
  cheaply into worker processes.

  Attributes:
    root: the Cityscapes root folder.
    split: the split read.
    names: image ids `'<city>/<city>_<seq>_<frame>'`, one per sample, in reading order.
    image_paths: the image file of each sample.
    label_paths: the labelIds file of each sample.
  """

  def __init__(self, root, split):
    """Lists the split's files and checks that every image has its label.

    Args:
      root: the Cityscapes root folder (the one holding `leftImg8bit/` and `gtFine/`).
      split: 'train', 'val' or 'test'.

    Raises:
      UserError: the root or the split's images are missing, or an image has no label file.
    """
    root = pathlib.Path(root)
    self.root, self.split = root, split
    image_dir = root / 'leftImg8bit' / split
    self.image_paths = tuple(sorted(image_dir.glob(f'*/*{_IMAGE_SUFFIX}')))
    if not self.image_paths:
      problem = (f'Cityscapes root {root} does not exist' if not root.is_dir()
                 else f'no *{_IMAGE_SUFFIX} files under {image_dir}')
      raise UserError(
          f'{problem}: expected {root}/leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX} and '
          f'{root}/gtFine/{split}/<city>/*{_LABEL_SUFFIX}; {_DEMO_HINT}')
    self.names = tuple(
        path.relative_to(image_dir).as_posix()[:-len(_IMAGE_SUFFIX)]
        for path in self.image_paths)
    self.label_paths = tuple(
        root / 'gtFine' / split / f'{name}{_LABEL_SUFFIX}' for name in self.names)
    for image_path, label_path in zip(self.image_paths, self.label_paths):
      if not label_path.is_file():
        raise UserError(
            f'Image {image_path} has no label file {label_path}: '
            f'extract gtFine_trainvaltest.zip into {root}')

  def __len__(self):
    return len(self.names)

  def image_sizes(self):
    """(height, width) of every sample's image, from the file headers (no decoding)."""
    return [image_size(path) for path in self.image_paths]

  def record_key(self):
    """What the decoded samples depend on, for `records.open_records`: the root, the split, the
    labelId -> trainId table, the names and every file's path, size and mtime."""
    return {'source': 'cityscapes', 'root': str(self.root.resolve()), 'split': self.split,
            'label_table': LABEL_ID_TO_TRAIN_ID.tobytes().hex(), 'names': list(self.names),
            'files': describe_files(self.root, [path for pair in zip(
                self.image_paths, self.label_paths) for path in pair])}

  def __getitem__(self, index):
    """Returns `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W] trainIds, 'name': str}`."""
    image = read_image(self.image_paths[index], 're-extract it from leftImg8bit_trainvaltest.zip')
    label_ids = _read_label_ids(self.label_paths[index])
    if image.shape[:2] != label_ids.shape:
      raise UserError(
          f'Image {self.image_paths[index]} is {image.shape[1]}x{image.shape[0]} but its label '
          f'{self.label_paths[index]} is {label_ids.shape[1]}x{label_ids.shape[0]}: '
          'replace the mismatched pair with the official files')
    return {'image': image, 'label': LABEL_ID_TO_TRAIN_ID[label_ids], 'name': self.names[index]}


def _read_label_ids(path):
  """Decodes a *_gtFine_labelIds.png file to uint8 [H, W] labelIds, checking its contents."""
  label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
  if label is None:
    raise UserError(f'Cannot decode label {path}: the file is corrupt or not an image; '
                    're-extract it from gtFine_trainvaltest.zip')
  if label.ndim != 2 or label.dtype != np.uint8:
    raise UserError(
        f'Label {path} is not a single-channel 8-bit image (shape {label.shape}, {label.dtype}): '
        f'use the official *{_LABEL_SUFFIX} files, not *_color.png')
  largest = int(label.max())
  if largest > MAX_LABEL_ID:
    raise UserError(
        f'Label {path} contains id {largest}, above the largest Cityscapes labelId {MAX_LABEL_ID}: '
        f'use the official *{_LABEL_SUFFIX} files, not *_labelTrainIds.png or *_color.png')
  return label
