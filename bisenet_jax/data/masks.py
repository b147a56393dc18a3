"""Masks: reading the class indices a mask file stores, writing predictions as palette PNGs, and
showing them in the classes' colours."""

import io

import cv2
import numpy as np
from PIL import Image

from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.errors import UserError

# Pillow modes whose pixels are class indices: 8-bit grey, palette (the index, not its colour),
# and 1-bit (0 and 1).
_INDEX_MODES = ('L', 'P', '1')
# 16-bit (and 32-bit integer) grey: some labelling tools and data sets store indices this way.
# Such a mask is read when its values fit the 8-bit mask values 0..255, where the label table
# then decides which are classes, ignored or refused.
_WIDE_MODES = ('I;16', 'I;16L', 'I;16B', 'I')


def write_index_png(path, indices, palette):
  """Writes uint8 [H, W] class indices as a palette PNG: viewers show each class's colour from
  `palette` (uint8 [K, 3]; 255, the ignore label, white), `read_mask` gives the indices back."""
  _index_image(indices, palette).save(path)


def encode_index_png(indices, palette) -> bytes:
  """The bytes of the PNG `write_index_png` writes."""
  buffer = io.BytesIO()
  _index_image(indices, palette).save(buffer, format='PNG')
  return buffer.getvalue()


def _index_image(indices, palette) -> Image.Image:
  image = Image.fromarray(np.asarray(indices, np.uint8))
  image.putpalette(colour_table(palette).tobytes())  # An 'L' image becomes a palette image.
  return image


def colour_table(palette: np.ndarray) -> np.ndarray:
  """uint8 [256, 3]: the colour of every uint8 label, as masks are drawn everywhere (the palette
  PNGs, ``colorize``, the server's page): class k its ``palette`` colour, 255 (ignored) white,
  and the values no class has (K..254) black."""
  colours = np.zeros((256, 3), np.uint8)
  colours[:len(palette)] = palette
  colours[IGNORE_LABEL] = 255
  return colours


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """uint8 [..., H, W] class indices -> uint8 [..., H, W, 3] RGB colours (``colour_table``: 255
  white, K..254 black, as the palette PNGs show them).

  Raises:
    UserError: labels that are not integers, or values outside 0..255 (no uint8 label).
  """
  labels = np.asarray(labels)
  if labels.dtype.kind not in 'iu':
    raise UserError(f'labels must be integer class ids 0..255, not {labels.dtype}: pass the '
                    "model's uint8 labels")
  if labels.dtype != np.uint8 and labels.size and (labels.min() < 0 or labels.max() > 255):
    raise UserError(f'labels must be class ids 0..255, these hold {labels.min()}..'
                    f"{labels.max()}: pass the model's uint8 labels")
  return colour_table(palette)[labels]


def blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The image and its colour mask mixed 50/50 (uint8 RGB)."""
  return cv2.addWeighted(image, 0.5, mask, 0.5, 0.0)


def read_mask(path):
  """Decodes a mask file to uint8 [H, W] of its stored values (a palette PNG's indices).

  Args:
    path: a PNG (or another lossless format Pillow reads) in mode 'L', 'P' or '1', or a 16-bit
      grey one whose values are all 0..255.

  Returns:
    uint8 [H, W].

  Raises:
    UserError: the file cannot be decoded, is a JPEG (whatever its name), has colour channels,
      or is a 16-bit mask holding a value above 255 (the message names the file and the value).
  """
  try:
    with Image.open(path) as mask:
      if mask.format == 'JPEG':
        raise UserError(f'Mask {path} is a JPEG file, whose lossy compression changes class '
                        'indices along every edge: save masks as PNG files')
      if mask.mode in _WIDE_MODES:
        return _narrowed(path, np.asarray(mask))
      if mask.mode not in _INDEX_MODES:
        raise UserError(_not_index_mask_message(path, mask))
      return np.asarray(mask, np.uint8)
  except OSError as error:
    raise UserError(f'Cannot decode mask {path} ({error}): the file is corrupt or not an image; '
                    'replace it or remove it with its image') from None


def _narrowed(path, values):
  """A wide-integer mask as uint8, when every value is an 8-bit mask value."""
  outside = values[(values < 0) | (values > 255)]
  if outside.size:
    raise UserError(f'Mask {path} is a 16-bit image holding value {int(outside[0])}, which is no '
                    'class index (0..K-1) and no ignore value (0..255): fix the mask, or map its '
                    'values to class indices and save it as an 8-bit PNG')
  return values.astype(np.uint8)


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
