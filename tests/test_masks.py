"""Tests of bisenet_jax.data.masks: which mask files are read as class indices, which refused, and
the colours masks are drawn in."""

import io
import re

import numpy as np
import pytest
from PIL import Image

from bisenet_jax.data.folder import SegmentationFolder
from bisenet_jax.errors import UserError
from labelled_files import write_mask, write_pair


def test_palette_png_is_read_as_indices_not_colours(tmp_path):
  (tmp_path / 'classes.txt').write_text('a\nb\nc\n')
  palette = np.zeros((256, 3), np.uint8)
  palette[:3] = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
  raw = np.array([[0, 1], [2, 255]], np.uint8)
  write_pair(tmp_path, 'p', raw, palette=palette)
  np.testing.assert_array_equal(SegmentationFolder(tmp_path, 'val')[0]['label'], raw)


def test_one_bit_mask_gives_classes_zero_and_one(tmp_path):
  (tmp_path / 'classes.txt').write_text('background\nplant\n')
  write_pair(tmp_path, 'm', np.zeros((2, 2)))
  Image.fromarray(np.array([[0, 1], [1, 0]], bool)).save(tmp_path / 'masks/val/m.png')
  assert Image.open(tmp_path / 'masks/val/m.png').mode == '1'
  np.testing.assert_array_equal(SegmentationFolder(tmp_path, 'val')[0]['label'], [[0, 1], [1, 0]])


def test_colour_mask_is_refused_with_what_to_do(dataset):
  colours = np.zeros((2, 3, 3), np.uint8)
  colours[0, 0] = (128, 64, 128)
  Image.fromarray(colours).save(dataset / 'masks/val/a.png')
  with pytest.raises(UserError, match=re.escape(str(dataset / 'masks/val/a.png')) +
                     ' is an RGB image, so it looks like a colour mask: convert it to a '
                     'single-channel PNG of class indices'):
    SegmentationFolder(dataset, 'val')[0]
  Image.fromarray(np.zeros((2, 3, 4), np.uint8)).save(dataset / 'masks/val/a.png')
  with pytest.raises(UserError, match='is a grey image stored as RGBA'):
    SegmentationFolder(dataset, 'val')[0]
  Image.fromarray(np.zeros((2, 3), np.float32)).save(dataset / 'masks/val/a.tiff')
  (dataset / 'masks/val/a.tiff').rename(dataset / 'masks/val/a.png')
  with pytest.raises(UserError, match="has pixel format 'F'.*8-bit single-channel"):
    SegmentationFolder(dataset, 'val')[0]


def test_jpeg_mask_is_refused_by_its_content_not_its_name(dataset):
  write_mask(dataset / 'masks/val/a.png', [[0, 1, 2], [2, 1, 0]], image_format='JPEG')
  with pytest.raises(UserError, match=re.escape(str(dataset / 'masks/val/a.png')) +
                     ' is a JPEG file, whose lossy compression changes class indices'):
    SegmentationFolder(dataset, 'val')[0]


def test_sixteen_bit_mask_of_class_indices_reads_like_an_eight_bit_one(dataset):
  values = np.array([[0, 1, 2], [255, 1, 0]], np.uint16)
  Image.fromarray(values).save(dataset / 'masks/val/a.png')
  assert Image.open(dataset / 'masks/val/a.png').mode == 'I;16'
  np.testing.assert_array_equal(SegmentationFolder(dataset, 'val')[0]['label'], values)


@pytest.mark.parametrize('value, message', [
    (300, r'is a 16-bit image holding value 300, which is no class index'),
    (7, r'contains value 7, a class index, but there are 3 classes'),
])
def test_sixteen_bit_mask_with_another_value_names_the_file_and_the_value(dataset, value, message):
  values = np.array([[0, 1, 2], [value, 1, 0]], np.uint16)
  Image.fromarray(values).save(dataset / 'masks/val/a.png')
  with pytest.raises(UserError, match=re.escape(str(dataset / 'masks/val/a.png')) + ' ' + message):
    SegmentationFolder(dataset, 'val')[0]


def test_colorize_draws_classes_ignored_white_and_values_without_a_class_black():
  from bisenet_jax.data import masks
  palette = np.array([(200, 10, 10), (10, 200, 10), (10, 10, 200)], np.uint8)
  labels = np.array([[0, 1, 2], [255, 3, 254]], np.uint8)
  want = [[(200, 10, 10), (10, 200, 10), (10, 10, 200)], [(255, 255, 255), (0, 0, 0), (0, 0, 0)]]
  np.testing.assert_array_equal(masks.colorize(labels, palette), want)
  np.testing.assert_array_equal(masks.colorize(labels[None].astype(np.int32), palette), [want])
  # The colours the palette PNGs (predict, evaluate, the server's mask_png) show.
  png = Image.open(io.BytesIO(masks.encode_index_png(labels, palette))).convert('RGB')
  np.testing.assert_array_equal(np.asarray(png), want)


@pytest.mark.parametrize('labels, message', [
    (np.array([[0, 256]]), 'these hold 0..256'),
    (np.array([[-1, 2]]), 'these hold -1..2'),
    (np.array([[0.0, 1.0]]), 'integer class ids 0..255, not float64'),
])
def test_colorize_refuses_what_is_no_uint8_label_in_one_line(labels, message):
  from bisenet_jax.data import masks
  with pytest.raises(UserError, match=re.escape(message)) as error:
    masks.colorize(labels, np.zeros((3, 3), np.uint8))
  assert '\n' not in str(error.value)
