"""Reading image files, the one way every source and command does it.

Images are decoded as the reference decodes them (``cv2.imread``, which applies the EXIF
orientation) and handed on as uint8 [H, W, 3] RGB. ``image_size`` reads the size the decoder
will produce from the file's header alone, so a split can be planned without decoding it.
"""

import io
import struct

import cv2
import numpy as np
from PIL import Image

from bisenet_jax.errors import UserError

# File endings taken as images when a folder is listed, in order of preference.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
_EXIF_ORIENTATION = 0x0112
# EXIF orientations that turn the image by 90 degrees (OpenCV applies them when decoding).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def read_image(path, remedy):
  """Decodes an image file to uint8 [H, W, 3] RGB, as the reference does (`cv2.imread`).

  Args:
    path: the image file (any format OpenCV reads; EXIF orientation is applied).
    remedy: what the user should do when the file cannot be decoded, for the error message.

  Returns:
    uint8 [H, W, 3] RGB.

  Raises:
    UserError: the file is missing, corrupt or not an image.
  """
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if image is None:
    raise UserError(f'Cannot decode image {path}: the file is corrupt or not an image; {remedy}')
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes, name: str, remedy: str):
  """`read_image` for an encoded image held in memory (PNG, JPEG, ...): uint8 [H, W, 3] RGB.

  ``name`` says which image it is in the error, e.g. 'image_bytes[2]'.
  """
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
  if image is None:
    raise UserError(f'Cannot decode {name}: it is not a PNG, JPEG or other image OpenCV reads; '
                    f'{remedy}')
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(source, remedy='replace it'):
  """(height, width) of the image `read_image` (a path) or `decode_image` (bytes) would decode,
  from its header alone: a size can be checked before a large image is decoded."""
  name = 'the image' if isinstance(source, bytes) else f'image {source}'
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
      width, height = image.size
      exif = _png_exif(image.fp) if image.format == 'PNG' else image.getexif()
      orientation = exif.get(_EXIF_ORIENTATION)
  except (OSError, struct.error, Image.DecompressionBombError) as error:
    # Pillow's message names the in-memory buffer object for bytes: only a file's is useful.
    detail = '' if isinstance(source, bytes) else f' ({error})'
    raise UserError(f'Cannot decode {name}{detail}: the file is corrupt or not an image; '
                    f'{remedy}') from None
  return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)


def _png_exif(stream) -> Image.Exif:
  """The EXIF tags of a PNG file open in `stream`, from its eXIf chunk wherever it is.

  Only the chunks' headers are read. Pillow's `getexif` decodes every pixel of a PNG whose
  header has no eXIf chunk, to look for one after the image data (about 30 ms for a 1024x2048
  frame, most of the cost of planning a split).
  """
  exif = Image.Exif()
  stream.seek(8)  # The PNG signature.
  while header := stream.read(8):
    length, kind = struct.unpack('>I4s', header)
    if kind == b'eXIf':
      exif.load(stream.read(length))
      break
    if kind == b'IEND':
      break
    stream.seek(length + 4, io.SEEK_CUR)  # The chunk's data and CRC.
  return exif
