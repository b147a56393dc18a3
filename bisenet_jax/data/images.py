"""Reading image files, the one way every source and command does it.

Images are decoded as the reference decodes them (``cv2.imread``, which applies the EXIF
orientation) and handed on as uint8 [H, W, 3] RGB. ``image_size`` reads the size the decoder
will produce from the file's header alone, so a split can be planned without decoding it.
"""

import cv2
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


def image_size(path):
  """(height, width) of the image `read_image` would decode, from the file's header."""
  try:
    with Image.open(path) as image:
      width, height = image.size
      orientation = image.getexif().get(_EXIF_ORIENTATION)
  except OSError as error:
    raise UserError(f'Cannot decode image {path} ({error}): the file is corrupt or not an image; '
                    'replace it') from None
  return (width, height) if orientation in _TRANSPOSING_ORIENTATIONS else (height, width)
