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
import dataclasses
import os
import pathlib
import re

import numpy as np
from PIL import Image

from bisenet_jax.data import cityscapes
from bisenet_jax.data.cityscapes import IGNORE_LABEL, image_size, read_image
from bisenet_jax.errors import UserError

CLASSES_FILE = 'classes.txt'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# Class indices and the ignore label share uint8 masks.
MAX_CLASSES = IGNORE_LABEL
_INTEGER = re.compile(r'[+-]?\d+')
# Pillow modes whose pixels are class indices: 8-bit grey, palette (the index, not its colour),
# and 1-bit (0 and 1).
_INDEX_MODES = ('L', 'P', '1')


def default_palette(num_classes):
  """Distinct colours for classes that have none: the Pascal VOC colour map.

  Index i's colour interleaves i's bits into the high bits of R, G and B (bit 0 to R, bit 1 to
  G, bit 2 to B, then the next three bits one place lower, and so on), as the VOC devkit's
  `VOClabelcolormap.m` does. It is a bijection on 0..255, so no two classes share a colour.

  Args:
    num_classes: how many colours, at most 256.

  Returns:
    uint8 [num_classes, 3] RGB; index 0 is black, 1 is (128, 0, 0), 15 is (192, 128, 128).
  """
  index = np.arange(num_classes)
  palette = np.zeros((num_classes, 3), np.int64)
  for bit in range(8):
    for channel in range(3):
      palette[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
  return palette.astype(np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassSet:
  """The classes a model predicts: their names and display colours.

  Attributes:
    names: tuple of K unique, non-empty class names; class i is `names[i]`.
    palette: uint8 [K, 3] RGB colour of each class (read-only). Given as None, it is
      `default_palette(K)`.
  """
  names: tuple
  palette: np.ndarray = None

  def __post_init__(self):
    names = tuple(self.names)
    if not 2 <= len(names) <= MAX_CLASSES:
      raise UserError(f'A class set needs 2 to {MAX_CLASSES} classes, got {len(names)}: '
                      'give every class a name (the background is a class too)')
    for name in names:
      if not isinstance(name, str) or not name.strip():
        raise UserError(f'Class names must be non-empty text, got {name!r}: name every class')
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
      raise UserError(f'Class names must be unique, but {repeated} repeat: rename them')
    palette = default_palette(len(names)) if self.palette is None else np.asarray(self.palette)
    if (palette.shape != (len(names), 3) or not np.issubdtype(palette.dtype, np.integer)
        or palette.min() < 0 or palette.max() > 255):
      raise UserError(f'The palette of {len(names)} classes must be {len(names)} RGB triples '
                      f'of integers 0..255, got shape {palette.shape} ({palette.dtype}): fix it')
    palette = palette.astype(np.uint8)
    palette.flags.writeable = False
    object.__setattr__(self, 'names', names)
    object.__setattr__(self, 'palette', palette)

  @property
  def num_classes(self):
    return len(self.names)

  def __eq__(self, other):
    if not isinstance(other, ClassSet):
      return NotImplemented
    return self.names == other.names and np.array_equal(self.palette, other.palette)

  def to_json(self):
    """Returns `{'names': [str, ...], 'palette': [[R, G, B], ...]}`, for json.dumps."""
    return {'names': list(self.names), 'palette': self.palette.tolist()}

  @classmethod
  def from_json(cls, data):
    """The inverse of `to_json`.

    Raises:
      UserError: `data` is not a valid class set.
    """
    if not isinstance(data, dict) or set(data) != {'names', 'palette'}:
      raise UserError(f"A class set needs exactly the keys 'names' and 'palette', got {data!r}: "
                      'the file holding it is damaged')
    return cls(names=data['names'], palette=data['palette'])


CITYSCAPES_CLASSES = ClassSet(cityscapes.CLASS_NAMES, cityscapes.PALETTE)

# Pascal VOC 2012 (the devkit's class list, `VOCdevkit/devkit_doc.pdf` and
# `VOCcode/VOCinit.m`, with 'background' first as the segmentation masks number it; spelled as
# mmsegmentation's `PascalVOCDataset.METAINFO` spells them). The colours are the devkit's
# colour map, the one the SegmentationClass palette PNGs use.
VOC_CLASSES = ClassSet(
    ('background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
     'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
     'sheep', 'sofa', 'train', 'tvmonitor'))

# ADE20K SceneParsing (ADEChallengeData2016): the 150 classes of `objectInfo150.csv` (the first
# name of each), as mmsegmentation's `ADE20KDataset.METAINFO` (mmseg/datasets/ade.py) lists
# them, except that mmseg writes 'bed ' with a trailing space; the palette is that METAINFO's,
# the one the community's ADE20K visualisations use.
ADE20K_CLASSES = ClassSet(
    ('wall', 'building', 'sky', 'floor', 'tree', 'ceiling', 'road', 'bed', 'windowpane', 'grass',
     'cabinet', 'sidewalk', 'person', 'earth', 'door', 'table', 'mountain', 'plant', 'curtain',
     'chair', 'car', 'water', 'painting', 'sofa', 'shelf', 'house', 'sea', 'mirror', 'rug',
     'field', 'armchair', 'seat', 'fence', 'desk', 'rock', 'wardrobe', 'lamp', 'bathtub',
     'railing', 'cushion', 'base', 'box', 'column', 'signboard', 'chest of drawers', 'counter',
     'sand', 'sink', 'skyscraper', 'fireplace', 'refrigerator', 'grandstand', 'path', 'stairs',
     'runway', 'case', 'pool table', 'pillow', 'screen door', 'stairway', 'river', 'bridge',
     'bookcase', 'blind', 'coffee table', 'toilet', 'flower', 'book', 'hill', 'bench',
     'countertop', 'stove', 'palm', 'kitchen island', 'computer', 'swivel chair', 'boat', 'bar',
     'arcade machine', 'hovel', 'bus', 'towel', 'light', 'truck', 'tower', 'chandelier',
     'awning', 'streetlight', 'booth', 'television receiver', 'airplane', 'dirt track',
     'apparel', 'pole', 'land', 'bannister', 'escalator', 'ottoman', 'bottle', 'buffet',
     'poster', 'stage', 'van', 'ship', 'fountain', 'conveyer belt', 'canopy', 'washer',
     'plaything', 'swimming pool', 'stool', 'barrel', 'basket', 'waterfall', 'tent', 'bag',
     'minibike', 'cradle', 'oven', 'ball', 'food', 'step', 'tank', 'trade name', 'microwave',
     'pot', 'animal', 'bicycle', 'lake', 'dishwasher', 'screen', 'blanket', 'sculpture', 'hood',
     'sconce', 'vase', 'traffic light', 'tray', 'ashcan', 'fan', 'pier', 'crt screen', 'plate',
     'monitor', 'bulletin board', 'shower', 'radiator', 'glass', 'clock', 'flag'),
    [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3],
     [120, 120, 80], [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7],
     [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82],
     [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250],
     [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220],
     [255, 9, 92], [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71],
     [255, 41, 10], [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7],
     [255, 122, 8], [0, 255, 20], [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255],
     [160, 150, 20], [0, 163, 255], [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0],
     [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255],
     [0, 173, 255], [31, 0, 255], [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255],
     [0, 255, 112], [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
     [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255],
     [173, 255, 0], [0, 255, 153], [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102],
     [255, 173, 0], [255, 0, 20], [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255],
     [255, 0, 204], [0, 255, 194], [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255],
     [0, 194, 255], [0, 122, 255], [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0],
     [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170], [133, 0, 255],
     [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112],
     [92, 255, 0], [0, 224, 255], [112, 224, 255], [70, 184, 160], [163, 0, 255],
     [153, 0, 255], [71, 255, 0], [255, 0, 163], [255, 204, 0], [255, 0, 143], [0, 255, 235],
     [133, 255, 0], [255, 0, 235], [245, 0, 255], [255, 0, 122], [255, 245, 0], [10, 190, 212],
     [214, 255, 0], [0, 204, 255], [20, 0, 255], [255, 255, 0], [0, 153, 255], [0, 41, 255],
     [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255], [71, 0, 255],
     [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0], [0, 133, 255], [255, 214, 0],
     [25, 194, 194], [102, 255, 0], [92, 0, 255]])


def read_classes_file(path):
  """Reads a class list: one class per line, `name` or `name R G B`, in class-index order.

  A name may contain spaces ('traffic light'); a line whose last three words are integers
  gives the class that colour. Either every class has a colour or none has (then they get
  `default_palette`). Blank lines, and lines whose first non-blank character is '#', are
  skipped; surrounding whitespace is dropped.

  Args:
    path: the classes file (UTF-8, with or without a byte-order mark).

  Returns:
    ClassSet.

  Raises:
    UserError: the file is missing or unreadable, or a line is invalid (the message names the
      file and the line): a colour outside 0..255, a repeated name, colours on some lines only,
      fewer than 2 or more than 255 classes.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding='utf-8-sig')
  except FileNotFoundError:
    raise UserError(f'The class list {path} does not exist: write one class name per line, '
                    'optionally followed by its colour R G B (e.g. "road 128 64 128")') from None
  except (OSError, UnicodeDecodeError) as error:
    raise UserError(f'Cannot read the class list {path} ({error}): save it as UTF-8 text') from None
  entries = [(number, *_parse_class_line(path, number, line.strip()))
             for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.strip().startswith('#')]
  if not 2 <= len(entries) <= MAX_CLASSES:
    count = f'{len(entries)} class' + ('' if len(entries) == 1 else 'es')
    raise UserError(f'{path} lists {count}, but a model needs 2 to {MAX_CLASSES} (the background '
                    'is a class too): list one class per line')
  first_line = {}
  for number, name, _ in entries:
    if name in first_line:
      raise UserError(f'{path}:{number}: class {name!r} is already on line {first_line[name]}: '
                      'class names must be unique')
    first_line[name] = number
  coloured = [colour is not None for _, _, colour in entries]
  if any(coloured) and not all(coloured):
    number, name, colour = entries[coloured.index(not coloured[0])]
    has, lacks = ('has', 'lacks') if colour is not None else ('lacks', 'has')
    raise UserError(f'{path}:{number}: class {name!r} {has} a colour but line {entries[0][0]} '
                    f'{lacks} one: give every class a colour R G B, or none (for default colours)')
  names = tuple(name for _, name, _ in entries)
  return ClassSet(names, [colour for _, _, colour in entries] if coloured[0] else None)


def _parse_class_line(path, number, line):
  """Returns (name, (R, G, B) or None) of one stripped, non-empty classes-file line."""
  words = line.split()
  if len(words) >= 4 and all(_INTEGER.fullmatch(word) for word in words[-3:]):
    name, colour = ' '.join(words[:-3]), tuple(int(word) for word in words[-3:])
    if not all(0 <= value <= 255 for value in colour):
      raise UserError(f'{path}:{number}: the colour {" ".join(words[-3:])} of {name!r} is '
                      'outside 0..255: give R G B as integers 0..255')
    return name, colour
  return ' '.join(words), None


def make_label_table(num_classes, *, ignore_index=255, reduce_zero_label=False, label_map=None):
  """How mask values become class indices: a lookup table, and the values to refuse.

  By default a mask value v is class v. `reduce_zero_label` makes 0 ignored and v class v - 1
  (ADE20K's masks, mmsegmentation's option of that name). `label_map` {mask value: class}
  states every value instead; a class of 255 ignores the value, and a value it leaves out is
  refused. In every case `ignore_index` is ignored, and a value whose class would not be
  0..K-1 is refused.

  Args:
    num_classes: K.
    ignore_index: the mask value that marks pixels to ignore.
    reduce_zero_label: see above.
    label_map: see above; keys and classes may be ints or decimal strings (as in JSON).

  Returns:
    (table, refused): table uint8 [256], the class index of each mask value (IGNORE_LABEL for
    ignored ones); refused bool [256], True for the values a mask must not contain.

  Raises:
    UserError: both `reduce_zero_label` and `label_map` are given, a `label_map` entry is out of
      range, or `ignore_index` would also be a class.
  """
  if label_map and reduce_zero_label:
    raise UserError('Give either label_map or reduce_zero_label, not both: put what '
                    'reduce_zero_label does into label_map')
  if not 0 <= ignore_index <= 255:
    raise UserError(f'ignore_index must be a mask value 0..255, got {ignore_index}')
  values = np.arange(256)
  ignored = np.zeros(256, bool)
  if label_map:
    classes = np.full(256, -1)
    for value, class_index in _parse_label_map(label_map, num_classes):
      ignored[value] = class_index == IGNORE_LABEL
      classes[value] = -1 if ignored[value] else class_index
  elif reduce_zero_label:
    classes, ignored[0] = values - 1, True
  else:
    classes = values
  if 0 <= classes[ignore_index] < num_classes and not ignored[ignore_index]:
    raise UserError(f'ignore_index {ignore_index} is also class {classes[ignore_index]} of '
                    f'{num_classes}: choose an ignore_index that is no class, such as 255')
  ignored[ignore_index] = True
  is_class = (classes >= 0) & (classes < num_classes) & ~ignored
  table = np.where(is_class, classes, IGNORE_LABEL).astype(np.uint8)
  return table, ~is_class & ~ignored


def _parse_label_map(label_map, num_classes):
  """Yields (mask value, class index or IGNORE_LABEL) of each entry, checking their ranges."""
  for key, target in label_map.items():
    try:
      value, class_index = int(key), int(target)
    except (TypeError, ValueError):
      raise UserError(f'label_map entry {key!r}: {target!r} is not an integer pair: map mask '
                      'values 0..255 to class indices') from None
    if not 0 <= value <= 255 or not (0 <= class_index < num_classes
                                     or class_index == IGNORE_LABEL):
      raise UserError(f'label_map entry {value}: {class_index} is out of range: map mask values '
                      f'0..255 to classes 0..{num_classes - 1}, or to {IGNORE_LABEL} to ignore')
    yield value, class_index


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


def write_index_png(path, indices, palette):
  """Writes uint8 [H, W] class indices as a palette PNG: viewers show each class's colour from
  `palette` (uint8 [K, 3]; 255, the ignore label, white), `read_mask` gives the indices back."""
  colours = np.zeros((256, 3), np.uint8)
  colours[:len(palette)] = palette
  colours[IGNORE_LABEL] = 255
  image = Image.fromarray(np.asarray(indices, np.uint8))
  image.putpalette(colours.tobytes())  # An 'L' image becomes a palette ('P') image.
  image.save(path)


def read_mask(path):
  """Decodes a mask file to uint8 [H, W] of its stored values (a palette PNG's indices).

  Args:
    path: a PNG (or another lossless format Pillow reads) in mode 'L', 'P' or '1'.

  Returns:
    uint8 [H, W].

  Raises:
    UserError: the file cannot be decoded, is a JPEG (whatever its name), has colour channels
      or is not 8-bit.
  """
  try:
    with Image.open(path) as mask:
      if mask.format == 'JPEG':
        raise UserError(f'Mask {path} is a JPEG file, whose lossy compression changes class '
                        'indices along every edge: save masks as PNG files')
      if mask.mode not in _INDEX_MODES:
        raise UserError(_not_index_mask_message(path, mask))
      return np.asarray(mask, np.uint8)
  except OSError as error:
    raise UserError(f'Cannot decode mask {path} ({error}): the file is corrupt or not an image; '
                    'replace it or remove it with its image') from None


def _not_index_mask_message(path, mask):
  """Why a mask in a Pillow mode other than 'L', 'P' or '1' is refused, and what to do."""
  if mask.mode in ('RGB', 'RGBA'):
    pixels = np.asarray(mask.convert('RGB'))
    if (pixels == pixels[..., :1]).all():
      return (f'Mask {path} is a grey image stored as {mask.mode}: save it as a single-channel '
              '(8-bit grey or palette) PNG of class indices')
    return (f'Mask {path} is an {mask.mode} image, so it looks like a colour mask: convert it '
            'to a single-channel PNG of class indices (0..K-1, 255 = ignore), e.g. by mapping '
            'each class colour to its line number in classes.txt (counted from 0)')
  return (f'Mask {path} has pixel format {mask.mode!r}: masks must be 8-bit single-channel '
          'PNGs (grey or palette) of class indices')


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
