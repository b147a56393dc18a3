"""Any labelled image set: a folder of images, a folder of masks and a list of classes.

The default layout, for a dataset of K classes:

  ROOT/classes.txt                        one class per line: `name` or `name R G B`
  ROOT/images/<split>/<name>.jpg|.jpeg|.png
  ROOT/masks/<split>/<name>.png           single-channel: each pixel a class index 0..K-1,
                                          or the ignore index (255)

`<name>` may contain sub-folders. Folder names, suffixes, an id list instead of a listing, and
how mask values become classes (`reduce_zero_label`, `label_map`) are constructor arguments,
which is all Pascal VOC 2012 and ADE20K need (`PascalVocFolder`, `Ade20kFolder`).

Every source yields the samples Cityscapes does, `{'image': uint8 [H, W, 3] RGB, 'label': uint8
[H, W] class indices, 'name': str}`, with `IGNORE_LABEL` (255) for ignored pixels whatever value
marks them in the masks, so the transforms, pipeline, loss and metrics need nothing else.
"""

import concurrent.futures
import os
import pathlib

import numpy as np

from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.data.class_sets import ADE20K_CLASSES, VOC_CLASSES
from bisenet_jax.data.classes import CLASSES_FILE, read_classes_file
from bisenet_jax.data.images import IMAGE_SUFFIXES, image_size, read_image
from bisenet_jax.data.label_maps import make_label_table
from bisenet_jax.data.masks import read_mask
from bisenet_jax.data.records import describe_files
from bisenet_jax.errors import UserError
from bisenet_jax.specs import ClassSet


class SegmentationFolder:
  """Random-access source over images and single-channel masks of class indices.

  Reads `root/<image_dir>/<name><image suffix>` and its mask `root/<mask_dir>/<name><mask_suffix>`
  in sorted order (or in the order of `split_file`), '{split}' in the folder names being
  replaced by the split. Masks are read with Pillow, so a palette PNG gives its indices; grey
  ('L') and 1-bit masks are read as they are. Mask values become classes through
  `make_label_table` when a sample is read. It has `__len__` and `__getitem__`, so grain can
  use it directly, and it holds only paths and two small tables, so it pickles cheaply into
  worker processes.

  Attributes:
    root: the dataset root.
    split: the split read.
    classes: the ClassSet.
    names: one name per sample: its path below the image folder without the suffix, or its id.
    image_paths: the image file of each sample.
    mask_paths: the mask file of each sample.
    label_table: uint8 [256], the class index of each mask value (IGNORE_LABEL if ignored).
    refused_values: bool [256], the mask values that are an error.
  """

  def __init__(self, root, split, classes=None, *, image_dir='images/{split}',
               mask_dir='masks/{split}', image_suffixes=IMAGE_SUFFIXES, mask_suffix='.png',
               split_file=None, ignore_index=255, reduce_zero_label=False, label_map=None):
    """Lists the split's images and masks and checks that they pair up.

    Args:
      root: the dataset root.
      split: the split's name, e.g. 'train' or 'val'.
      classes: a ClassSet, or the path of a classes file (`read_classes_file`); None reads
        `root/classes.txt`.
      image_dir: the images' folder, relative to `root`.
      mask_dir: the masks' folder, relative to `root`.
      image_suffixes: file-name endings of images (case-insensitive), in order of preference.
      mask_suffix: file-name ending of masks (case-insensitive).
      split_file: a file relative to `root` listing the split's names, one per line; None
        takes every image below `image_dir` (files and folders starting with '.' left out).
      ignore_index, reduce_zero_label, label_map: how mask values become classes
        (`make_label_table`).

    Raises:
      UserError: the root, the class list or the split is missing, the split is empty, an
        image has no mask or a mask no image, or the label mapping is invalid.
    """
    self.root = pathlib.Path(root)
    self.split = split
    self._image_dir = self.root / image_dir.format(split=split)
    self._mask_dir = self.root / mask_dir.format(split=split)
    self._image_suffixes = tuple(image_suffixes)
    self._mask_suffix = mask_suffix
    if not self.root.is_dir():
      raise UserError(f'The dataset root {self.root} does not exist: {self._layout_hint()}')
    if classes is None:
      classes = self.root / CLASSES_FILE
    self.classes = classes if isinstance(classes, ClassSet) else read_classes_file(classes)
    self.label_table, self.refused_values = make_label_table(
        self.classes.num_classes, ignore_index=ignore_index,
        reduce_zero_label=reduce_zero_label, label_map=label_map)
    self._value_rule = ('label_map' if label_map else
                        'reduce_zero_label' if reduce_zero_label else 'identity')
    self._ignore_index = ignore_index
    if split_file is None:
      pairs = self._pairs_from_listing()
    else:
      pairs = self._pairs_from_split_file(self.root / split_file.format(split=split))
    self.names, self.image_paths, self.mask_paths = (tuple(column) for column in zip(*pairs))

  def __len__(self):
    return len(self.names)

  def __getitem__(self, index):
    """Returns `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W] classes, 'name': str}`.

    Raises:
      UserError: a file cannot be decoded, the mask is not single-channel or is a JPEG, image
        and mask sizes differ, or the mask holds a refused value.
    """
    image = read_image(self.image_paths[index], 'replace the file or remove it with its mask')
    mask, _ = self._read_checked_mask(index, image.shape[:2])
    return {'image': image, 'label': self.label_table[mask], 'name': self.names[index]}

  def image_sizes(self):
    """(height, width) of every sample's image, from the file headers (no decoding)."""
    return [image_size(path) for path in self.image_paths]

  def record_key(self):
    """What the decoded samples depend on, for `records.open_records`: the kind, the root, the
    split, the classes and how mask values become them, the names and every file's path, size
    and mtime."""
    return {'source': type(self).__name__, 'root': str(self.root.resolve()), 'split': self.split,
            'classes': list(self.classes.names), 'value_rule': self._value_rule,
            'ignore_index': self._ignore_index, 'label_table': self.label_table.tobytes().hex(),
            'refused_values': np.packbits(self.refused_values).tobytes().hex(),
            'names': list(self.names),
            'files': describe_files(self.root, [path for pair in zip(
                self.image_paths, self.mask_paths) for path in pair])}

  def check_all(self, max_workers=None):
    """Reads every mask and checks it against its image's size, for a fast check up front.

    Images are only opened for their size (from the header, with the EXIF rotation OpenCV
    applies): decoding them all would take far longer, and `__getitem__` still reports one
    that is corrupt.

    Args:
      max_workers: reader threads; None uses one per CPU, up to 8.

    Returns:
      int64 [K]: the number of pixels of each class over the split.

    Raises:
      UserError: the first problem `__getitem__` would raise for a mask, or an image header
        that cannot be read.
    """
    max_workers = max_workers or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
      value_counts = sum(pool.map(self._value_counts, range(len(self))))
    class_counts = np.bincount(self.label_table, weights=value_counts, minlength=256)
    return class_counts[:self.classes.num_classes].astype(np.int64)

  def _value_counts(self, index):
    """int64 [256]: how many pixels of sample `index`'s mask have each value."""
    return self._read_checked_mask(index, image_size(self.image_paths[index]))[1]

  def _read_checked_mask(self, index, image_size):
    """Returns (mask uint8 [H, W] of raw values, value counts int64 [256]) after every check."""
    mask_path = self.mask_paths[index]
    mask = read_mask(mask_path)
    if mask.shape != tuple(image_size):
      raise UserError(_size_mismatch_message(self.image_paths[index], image_size, mask_path,
                                             mask.shape))
    counts = np.bincount(mask.ravel(), minlength=256)
    refused = np.flatnonzero((counts > 0) & self.refused_values)
    if refused.size:
      raise UserError(self._refused_value_message(mask_path, int(refused[0])))
    return mask, counts

  def _refused_value_message(self, path, value):
    num_classes = self.classes.num_classes
    if self._value_rule == 'label_map':
      return (f'Mask {path} contains value {value}, which label_map does not map: add it to '
              f'label_map (mapped to {IGNORE_LABEL} to ignore it)')
    meaning = (f'which reduce_zero_label makes class {value - 1}'
               if self._value_rule == 'reduce_zero_label' else 'a class index')
    return (f'Mask {path} contains value {value}, {meaning}, but there are {num_classes} classes '
            f'(0..{num_classes - 1}; {self._ignore_index} = ignore): fix the mask, or add the '
            'missing classes to the class list')

  def _layout_hint(self):
    return (f'expected images {self._image_dir}/<name>{"|".join(self._image_suffixes)} and '
            f'masks {self._mask_dir}/<name>{self._mask_suffix}')

  def _pairs_from_listing(self):
    """(name, image path, mask path) of every image below the image folder, sorted by name."""
    if not self._image_dir.is_dir():
      raise UserError(f'The image folder {self._image_dir} does not exist: {self._layout_hint()}')
    images = _files_by_name(self._image_dir, self._image_suffixes)
    if not images:
      raise UserError(f'No images ({", ".join(self._image_suffixes)}) under {self._image_dir}: '
                      f'{self._layout_hint()}')
    masks = _files_by_name(self._mask_dir, (self._mask_suffix,)) if self._mask_dir.is_dir() else {}
    for name, image_paths in sorted(images.items()):
      if len(image_paths) > 1:
        raise UserError(f'Images {" and ".join(map(str, image_paths))} share the name {name!r}, '
                        'so they would share a mask: rename or remove one')
      if name not in masks:
        raise UserError(f'Image {image_paths[0]} has no mask '
                        f'{self._mask_dir / (name + self._mask_suffix)}: add it, or remove the '
                        'image')
    for name, mask_paths in sorted(masks.items()):
      if name not in images:
        expected = ' or '.join(str(self._image_dir / (name + suffix))
                               for suffix in self._image_suffixes)
        raise UserError(f'Mask {mask_paths[0]} has no image {expected}: add it, or remove the '
                        'mask')
    return [(name, images[name][0], masks[name][0]) for name in sorted(images)]

  def _pairs_from_split_file(self, split_file):
    """(name, image path, mask path) of every name listed in `split_file`, in its order."""
    try:
      names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    except OSError as error:
      raise UserError(f'Cannot read the split list {split_file} ({error}): it should list the '
                      "split's names, one per line") from None
    if not names:
      raise UserError(f'The split list {split_file} is empty: list the split\'s names, one per '
                      'line')
    pairs = []
    for name in names:
      candidates = [self._image_dir / (name + suffix) for suffix in self._image_suffixes]
      image_path = next((path for path in candidates if path.is_file()), None)
      if image_path is None:
        raise UserError(f'{split_file} lists {name!r}, but there is no image '
                        f'{" or ".join(map(str, candidates))}: add it, or remove the line')
      mask_path = self._mask_dir / (name + self._mask_suffix)
      if not mask_path.is_file():
        raise UserError(f'Image {image_path} has no mask {mask_path}: add it, or remove '
                        f'{name!r} from {split_file}')
      pairs.append((name, image_path, mask_path))
    return pairs


class PascalVocFolder(SegmentationFolder):
  """Pascal VOC 2012 segmentation: 21 classes (with 'background'), 255 = ignore (object edges).

  Reads `JPEGImages/<id>.jpg` and `SegmentationClass/<id>.png` (palette PNGs) for the ids of
  `ImageSets/Segmentation/<split>.txt`, with the official class names and colours.
  """

  def __init__(self, root, split, *, mask_dir='SegmentationClass',
               split_file='ImageSets/Segmentation/{split}.txt'):
    """Lists the split's ids and checks that their image and mask files exist.

    Args:
      root: `VOC2012`, or a folder holding `VOC2012` or `VOCdevkit/VOC2012`.
      split: 'train', 'val', 'trainval', or any list in the split file's folder.
      mask_dir: the masks' folder, e.g. 'SegmentationClassAug' for the augmented set.
      split_file: the id list, relative to the VOC2012 folder.
    """
    super().__init__(_find_root(root, ('VOC2012', 'VOCdevkit/VOC2012')), split, VOC_CLASSES,
                     image_dir='JPEGImages', mask_dir=mask_dir, image_suffixes=('.jpg',),
                     split_file=split_file)


class Ade20kFolder(SegmentationFolder):
  """ADE20K SceneParsing (ADEChallengeData2016): 150 classes, mask value 0 ignored.

  Reads `images/<training|validation>/*.jpg` and `annotations/<...>/*.png`, whose value v is
  class v - 1 (`reduce_zero_label`), with the official class names and mmsegmentation's colours.
  """

  _SPLITS = {'train': 'training', 'val': 'validation'}

  def __init__(self, root, split):
    """Lists the split's images and checks that they pair up with masks.

    Args:
      root: `ADEChallengeData2016`, or the folder holding it.
      split: 'train' or 'val' (or the folder names 'training', 'validation').
    """
    super().__init__(_find_root(root, ('ADEChallengeData2016',)), self._SPLITS.get(split, split),
                     ADE20K_CLASSES, mask_dir='annotations/{split}', image_suffixes=('.jpg',),
                     reduce_zero_label=True)


def _size_mismatch_message(image_path, image_size, mask_path, mask_size):
  (height, width), (mask_height, mask_width) = image_size, mask_size
  hint = ('; the image may be turned by its EXIF orientation, which OpenCV applies: save it '
          'upright without the tag' if (height, width) == (mask_width, mask_height) else '')
  return (f'Image {image_path} is {width}x{height} but its mask {mask_path} is '
          f'{mask_width}x{mask_height}: a mask must have its image\'s size{hint}')


def _files_by_name(folder, suffixes):
  """{name: [paths]} of the files below `folder` ending in one of `suffixes` (any case).

  The name is the path below `folder` without the suffix. Files and folders whose names start
  with '.' (hidden, or macOS '._*' resource forks) are left out.
  """
  lowered = tuple(suffix.lower() for suffix in suffixes)
  files = {}
  for path in sorted(folder.rglob('*')):
    relative = path.relative_to(folder).as_posix()
    if any(part.startswith('.') for part in relative.split('/')) or not path.is_file():
      continue
    suffix = next((s for s in lowered if relative.lower().endswith(s)), None)
    if suffix is not None:
      files.setdefault(relative[:-len(suffix)], []).append(path)
  return files


def _find_root(root, subfolders):
  """`root`, or the first of `subfolders` below it that exists (users pass either level)."""
  root = pathlib.Path(root)
  return next((root / sub for sub in subfolders if (root / sub).is_dir()), root)
