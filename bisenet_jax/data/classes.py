"""The classes a model predicts (names and display colours) and the classes.txt file that lists
them.

A ``classes.txt`` has one class per line, in class-index order: ``name`` or ``name R G B``.
Checkpoints and exported files carry a ``ClassSet`` as JSON, so evaluation and prediction show
a model's own class names and colours.
"""

import dataclasses
import pathlib
import re

import numpy as np

from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.errors import UserError

CLASSES_FILE = 'classes.txt'
# Class indices and the ignore label share uint8 masks.
MAX_CLASSES = IGNORE_LABEL
_INTEGER = re.compile(r'[+-]?\d+')


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
