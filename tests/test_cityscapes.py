"""Tests of bisenet_jax.data.cityscapes: the label table and the folder reader with its errors."""

import re

import cv2
import numpy as np
import pytest

from bisenet_jax.data import cityscapes
from bisenet_jax.data.cityscapes import CityscapesFolder
from bisenet_jax.errors import UserError

# docs/reference.md §5.2: the labelId of each trainId 0..18.
REFERENCE_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
NAME = 'bonn/bonn_000000_000001'


def write_frame(root, split, name, label_ids, image=None):
  """Writes one frame in the official layout; returns (image path, label path)."""
  image = np.zeros(label_ids.shape + (3,), np.uint8) if image is None else image
  image_path = root / 'leftImg8bit' / split / f'{name}_leftImg8bit.png'
  label_path = root / 'gtFine' / split / f'{name}_gtFine_labelIds.png'
  for path, array in ((image_path, image), (label_path, label_ids)):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
  return image_path, label_path


def both(first, second, between='.*'):
  """A regex matching a message that names `first`, then `second`."""
  return re.escape(str(first)) + between + re.escape(str(second))


def test_label_table_matches_reference():
  assert cityscapes.NUM_CLASSES == 19
  assert cityscapes.IGNORE_LABEL == 255
  assert cityscapes.CLASS_NAMES[:3] == ('road', 'sidewalk', 'building')
  assert cityscapes.CLASS_NAMES[-1] == 'bicycle'
  assert cityscapes.TRAIN_ID_TO_LABEL_ID.tolist() == REFERENCE_LABEL_IDS
  expected = np.full(256, 255)
  expected[REFERENCE_LABEL_IDS] = np.arange(19)
  np.testing.assert_array_equal(cityscapes.LABEL_ID_TO_TRAIN_ID, expected)
  assert cityscapes.LABEL_ID_TO_TRAIN_ID.dtype == np.uint8
  assert cityscapes.PALETTE.shape == (19, 3) and cityscapes.PALETTE.dtype == np.uint8
  assert cityscapes.PALETTE[0].tolist() == [128, 64, 128]  # road
  assert cityscapes.PALETTE[10].tolist() == [70, 130, 180]  # sky


def test_reads_official_layout_in_sorted_order_with_train_ids(tmp_path):
  label_ids = np.array([[7, 26, 33], [0, 29, 8]], np.uint8)
  bgr = np.zeros((2, 3, 3), np.uint8)
  bgr[..., 0] = 200  # blue, as cv2 stores it
  write_frame(tmp_path, 'val', 'zurich/zurich_000000_000001', label_ids)
  write_frame(tmp_path, 'val', 'aachen/aachen_000000_000002', label_ids, image=bgr)
  write_frame(tmp_path, 'val', 'aachen/aachen_000000_000001', label_ids)
  write_frame(tmp_path, 'train', NAME, label_ids)

  folder = CityscapesFolder(tmp_path, 'val')

  assert len(folder) == 3
  assert folder.names == ('aachen/aachen_000000_000001', 'aachen/aachen_000000_000002',
                          'zurich/zurich_000000_000001')
  sample = folder[1]
  assert sample['name'] == 'aachen/aachen_000000_000002'
  np.testing.assert_array_equal(sample['label'], [[0, 13, 18], [255, 255, 1]])
  assert sample['label'].dtype == np.uint8
  assert sample['image'].dtype == np.uint8 and sample['image'].shape == (2, 3, 3)
  assert (sample['image'][..., 2] == 200).all() and (sample['image'][..., :2] == 0).all()  # RGB
  expected_label = tmp_path / 'gtFine/val/aachen/aachen_000000_000002_gtFine_labelIds.png'
  assert folder.label_paths[1] == expected_label


def test_missing_root_names_layout_and_demo(tmp_path):
  root = tmp_path / 'nowhere'
  with pytest.raises(UserError, match=re.escape(str(root))) as error:
    CityscapesFolder(root, 'train')
  assert 'leftImg8bit/train/<city>' in str(error.value)
  assert '--config configs/r18.py:demo' in str(error.value)


def test_empty_split_names_layout(tmp_path):
  write_frame(tmp_path, 'train', NAME, np.zeros((2, 2), np.uint8))
  with pytest.raises(UserError, match=r'leftImg8bit/val.*configs/r18.py:demo'):
    CityscapesFolder(tmp_path, 'val')


def test_image_without_label_names_both(tmp_path):
  image_path, label_path = write_frame(tmp_path, 'val', NAME, np.zeros((2, 2), np.uint8))
  label_path.unlink()
  with pytest.raises(UserError, match=both(image_path, label_path)):
    CityscapesFolder(tmp_path, 'val')


@pytest.mark.parametrize('broken', ['image', 'label'])
def test_corrupt_file_is_named(tmp_path, broken):
  paths = write_frame(tmp_path, 'val', NAME, np.zeros((2, 2), np.uint8))
  path = paths[0] if broken == 'image' else paths[1]
  path.write_bytes(b'not a png')
  folder = CityscapesFolder(tmp_path, 'val')
  with pytest.raises(UserError, match=f'Cannot decode {broken} ' + re.escape(str(path))):
    folder[0]


def test_train_ids_file_is_rejected_with_value(tmp_path):
  _, label_path = write_frame(tmp_path, 'val', NAME, np.array([[0, 18], [255, 1]], np.uint8))
  expected = re.escape(str(label_path)) + r' contains id 255.*_gtFine_labelIds.png'
  with pytest.raises(UserError, match=expected):
    CityscapesFolder(tmp_path, 'val')[0]


def test_colour_label_is_rejected(tmp_path):
  _, label_path = write_frame(tmp_path, 'val', NAME, np.zeros((2, 2), np.uint8))
  cv2.imwrite(str(label_path), np.zeros((2, 2, 3), np.uint8))
  expected = re.escape(str(label_path)) + ' is not a single-channel 8-bit'
  with pytest.raises(UserError, match=expected):
    CityscapesFolder(tmp_path, 'val')[0]


def test_size_mismatch_names_both(tmp_path):
  image_path, label_path = write_frame(tmp_path, 'val', NAME, np.zeros((2, 2), np.uint8),
                                       image=np.zeros((2, 3, 3), np.uint8))
  with pytest.raises(UserError, match=both(image_path, label_path, between=' is 3x2.*')):
    CityscapesFolder(tmp_path, 'val')[0]
