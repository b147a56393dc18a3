"""The classes a model predicts: their names and display colours (``ClassSet``).

Checkpoints and exported files carry a ``ClassSet`` as JSON, so evaluation and prediction show
a model's own class names and colours; ``data.classes`` reads one from a ``classes.txt``.
"""

import dataclasses

import numpy as np

from bisenet_jax.errors import UserError

# Class indices and the ignore label (255) share uint8 masks.
MAX_CLASSES = 255


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
