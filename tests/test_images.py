"""Tests of bisenet_jax.data.images: sizes from headers, as the decoder will produce them."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from bisenet_jax.data import images
from bisenet_jax.errors import UserError


def png_chunks(data):
  position, chunks = 8, []
  while position < len(data):
    length, _ = struct.unpack('>I4s', data[position:position + 8])
    chunks.append(data[position:position + 12 + length])
    position += 12 + length
  return chunks


def png_with_orientation(orientation, exif_after_pixels):
  """A 2x3 PNG (shown 3x2 when turned) whose eXIf chunk precedes or follows its pixel data."""
  pil = Image.fromarray(np.random.default_rng(0).integers(0, 256, (2, 3, 3), dtype=np.uint8))
  tags = pil.getexif()
  tags[0x0112] = orientation
  buffer = io.BytesIO()
  pil.save(buffer, format='PNG', exif=tags)
  data = buffer.getvalue()
  if not exif_after_pixels:
    return data
  chunks = png_chunks(data)
  kinds = [chunk[4:8] for chunk in chunks]
  exif = chunks.pop(kinds.index(b'eXIf'))
  return data[:8] + b''.join(chunks[:-1]) + exif + chunks[-1]


@pytest.mark.parametrize('exif_after_pixels', [False, True])
@pytest.mark.parametrize('orientation', [1, 6])
def test_png_size_applies_the_exif_orientation_wherever_the_chunk_is(orientation,
                                                                      exif_after_pixels):
  data = png_with_orientation(orientation, exif_after_pixels)
  decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  assert images.image_size(data) == decoded.shape[:2] == ((3, 2) if orientation == 6 else (2, 3))


def test_png_size_reads_headers_only():
  """Pixel data that would not decode does not matter: the size comes from the header."""
  data = png_with_orientation(1, exif_after_pixels=False)
  chunks = png_chunks(data)
  kinds = [chunk[4:8] for chunk in chunks]
  garbage = b'\x00' * 64
  broken = struct.pack('>I', len(garbage)) + b'IDAT' + garbage + struct.pack(
      '>I', zlib.crc32(b'IDAT' + garbage))
  chunks[kinds.index(b'IDAT')] = broken
  assert images.image_size(data[:8] + b''.join(chunks)) == (2, 3)


def test_a_truncated_png_is_a_one_line_error():
  data = png_with_orientation(1, exif_after_pixels=False)
  with pytest.raises(UserError, match='the file is corrupt or not an image; replace it'):
    images.image_size(data[:30])
