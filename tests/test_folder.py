"""Tests of bisenet_jax.data.folder: the folder, VOC and ADE20K layouts, whole-split checks, and
the one-line message of every bad input."""

import pickle
import re

import cv2
import numpy as np
import pytest

from bisenet_jax.data import pipeline
from bisenet_jax.data.class_sets import ADE20K_CLASSES, VOC_CLASSES
from bisenet_jax.specs import ClassSet, default_palette
from bisenet_jax.data.folder import Ade20kFolder, PascalVocFolder, SegmentationFolder
from bisenet_jax.errors import UserError
from labelled_files import (COLOURED_CLASSES, THREE_CLASSES, both, reference_labels, write_image,
                            write_mask, write_pair)


def test_missing_classes_file_says_what_to_write(tmp_path):
  with pytest.raises(UserError, match=re.escape(str(tmp_path / 'classes.txt')) +
                     ' does not exist: write one class name per line'):
    SegmentationFolder(tmp_path, 'val')


# The folder layout.

def test_reads_folder_layout_in_sorted_order_with_mapped_labels(tmp_path):
  (tmp_path / 'classes.txt').write_text(COLOURED_CLASSES)
  raw = np.array([[0, 1, 2, 255], [2, 2, 1, 0]], np.uint8)
  write_pair(tmp_path, 'b', raw, image_suffix='.jpeg')
  write_pair(tmp_path, 'sub/a', raw, image_suffix='.jpg')
  image_c = write_image(tmp_path / 'images/val/c.PNG', 2, 4, seed=3)
  write_mask(tmp_path / 'masks/val/c.png', raw)
  write_pair(tmp_path, 'x', raw, split='train')
  (tmp_path / 'images/val/._b.jpg').write_bytes(b'macOS resource fork')
  (tmp_path / 'images/val/notes.txt').write_text('not an image')

  source = SegmentationFolder(tmp_path, 'val')

  assert source.names == ('b', 'c', 'sub/a')
  assert len(source) == 3
  assert source.classes.names == THREE_CLASSES
  assert source.mask_paths[2] == tmp_path / 'masks/val/sub/a.png'
  for index in range(3):
    sample = source[index]
    assert sample['name'] == source.names[index]
    np.testing.assert_array_equal(sample['label'], raw)
    assert sample['label'].dtype == np.uint8 and sample['image'].shape == (2, 4, 3)
  np.testing.assert_array_equal(source[1]['image'], image_c)


def test_jpeg_image_is_read_as_rgb(tmp_path):
  (tmp_path / 'classes.txt').write_text('a\nb\n')
  image = np.zeros((8, 8, 3), np.uint8)
  image[..., 0] = 200  # red
  (tmp_path / 'images/val').mkdir(parents=True)
  cv2.imwrite(str(tmp_path / 'images/val/r.jpg'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  write_mask(tmp_path / 'masks/val/r.png', np.zeros((8, 8)))
  read = SegmentationFolder(tmp_path, 'val')[0]['image']
  assert np.abs(read.astype(int) - image).max() <= 2


@pytest.mark.parametrize('options, values', [
    (dict(), [0, 1, 2, 255]),
    (dict(ignore_index=9), [0, 1, 2, 9]),
    (dict(reduce_zero_label=True), [0, 1, 2, 3, 255]),
    (dict(label_map={0: 255, 5: 0, 6: 1, 7: 2}), [0, 5, 6, 7, 255]),
])
def test_sample_labels_equal_numpy(tmp_path, options, values):
  (tmp_path / 'classes.txt').write_text('a\nb\nc\n')
  raw = np.random.default_rng(0).choice(values, (6, 7)).astype(np.uint8)
  write_pair(tmp_path, 'f', raw)
  label = SegmentationFolder(tmp_path, 'val', **options)[0]['label']
  want, refused = reference_labels(raw, 3, **options)
  assert not refused.any()
  np.testing.assert_array_equal(label, want)


def test_custom_folders_suffixes_and_class_set(tmp_path):
  raw = np.array([[0, 1]], np.uint8)
  write_image(tmp_path / 'train/pics/f1_rgb.png', 1, 2)
  write_mask(tmp_path / 'train/labels/f1_gt.png', raw)
  source = SegmentationFolder(tmp_path, 'train', ClassSet(('bg', 'fg')), image_dir='{split}/pics',
                              mask_dir='{split}/labels', image_suffixes=('_rgb.png',),
                              mask_suffix='_gt.png')
  assert source.names == ('f1',)
  np.testing.assert_array_equal(source[0]['label'], raw)


# Pascal VOC and ADE20K.

def write_voc(root):
  """A VOCdevkit/VOC2012 fixture with palette masks and two id lists; returns the masks."""
  voc = root / 'VOCdevkit/VOC2012'
  masks = {'2007_000032': [[0, 1, 255], [15, 15, 20]], '2007_000039': [[0, 0, 0], [0, 0, 7]],
           '2007_000042': [[19, 19, 255], [0, 3, 3]]}
  for image_id, values in masks.items():
    write_image(voc / 'JPEGImages' / f'{image_id}.jpg', 2, 3)
    write_mask(voc / 'SegmentationClass' / f'{image_id}.png', values,
               palette=default_palette(256))
  (voc / 'ImageSets/Segmentation').mkdir(parents=True)
  (voc / 'ImageSets/Segmentation/train.txt').write_text('2007_000042\n2007_000032\n')
  (voc / 'ImageSets/Segmentation/val.txt').write_text('2007_000039\n')
  return voc, masks


@pytest.mark.parametrize('level', ['', 'VOCdevkit', 'VOCdevkit/VOC2012'])
def test_voc_reads_listed_ids_with_palette_masks(tmp_path, level):
  voc, masks = write_voc(tmp_path)
  train = PascalVocFolder(tmp_path / level, 'train')
  assert train.root == voc
  assert train.names == ('2007_000042', '2007_000032')  # the list's order
  assert train.classes == VOC_CLASSES
  for index, name in enumerate(train.names):
    np.testing.assert_array_equal(train[index]['label'], masks[name])
  assert len(PascalVocFolder(voc, 'val')) == 1


def test_voc_refuses_a_value_beyond_its_classes_and_missing_listed_files(tmp_path):
  voc, _ = write_voc(tmp_path)
  write_mask(voc / 'SegmentationClass/2007_000039.png', [[0, 0, 0], [21, 0, 0]])
  with pytest.raises(UserError, match=re.escape(str(voc / 'SegmentationClass/2007_000039.png')) +
                     r' contains value 21, a class index, but there are 21 classes'):
    PascalVocFolder(voc, 'val')[0]
  (voc / 'ImageSets/Segmentation/val.txt').write_text('2007_000039\n2008_000001\n')
  with pytest.raises(UserError, match=re.escape(str(voc / 'ImageSets/Segmentation/val.txt')) +
                     r" lists '2008_000001', but there is no image .*2008_000001\.jpg"):
    PascalVocFolder(voc, 'val')
  (voc / 'SegmentationClass/2007_000039.png').unlink()
  with pytest.raises(UserError, match=both(voc / 'JPEGImages/2007_000039.jpg',
                                           voc / 'SegmentationClass/2007_000039.png')):
    PascalVocFolder(voc, 'val')
  with pytest.raises(UserError, match=r'split list .*test\.txt'):
    PascalVocFolder(voc, 'test')


def write_ade(root):
  ade = root / 'ADEChallengeData2016'
  masks = {'ADE_train_00000001': [[0, 1, 150], [12, 12, 0]],
           'ADE_train_00000002': [[3, 3, 3], [3, 3, 4]]}
  for name, values in masks.items():
    write_image(ade / 'images/training' / f'{name}.jpg', 2, 3)
    write_mask(ade / 'annotations/training' / f'{name}.png', values)
  write_image(ade / 'images/validation/ADE_val_00000001.jpg', 2, 3)
  write_mask(ade / 'annotations/validation/ADE_val_00000001.png', [[1, 2, 151], [0, 0, 0]])
  return ade, masks


def test_ade20k_reduces_zero_label(tmp_path):
  ade, masks = write_ade(tmp_path)
  train = Ade20kFolder(tmp_path, 'train')
  assert train.root == ade and train.names == tuple(sorted(masks))
  assert train.classes == ADE20K_CLASSES
  for index, name in enumerate(train.names):
    raw = np.array(masks[name], np.uint8)
    np.testing.assert_array_equal(train[index]['label'], np.where(raw == 0, 255, raw - 1))
  assert train[0]['label'].tolist() == [[255, 0, 149], [11, 11, 255]]
  val = Ade20kFolder(ade, 'validation')
  with pytest.raises(UserError, match=r'contains value 151, which reduce_zero_label makes class '
                     r'150, but there are 150 classes \(0\.\.149; 255 = ignore\)'):
    val[0]


# Bad input: one line each, naming the files.

def test_image_without_mask_names_both(dataset):
  image_path = dataset / 'images/val/b.jpg'
  write_image(image_path, 2, 3)
  with pytest.raises(UserError, match=both(image_path, dataset / 'masks/val/b.png')):
    SegmentationFolder(dataset, 'val')


def test_mask_without_image_names_the_mask_and_the_images_expected(dataset):
  mask_path = write_mask(dataset / 'masks/val/sub/b.png', np.zeros((2, 3)))
  expected = ' or '.join(str(dataset / 'images/val' / f'sub/b{suffix}')
                         for suffix in ('.jpg', '.jpeg', '.png'))
  with pytest.raises(UserError, match=re.escape(f'Mask {mask_path} has no image {expected}')):
    SegmentationFolder(dataset, 'val')


def test_two_images_with_one_name_are_refused(dataset):
  write_image(dataset / 'images/val/a.jpg', 2, 3)
  with pytest.raises(UserError, match=both(dataset / 'images/val/a.jpg',
                                           dataset / 'images/val/a.png') + " share the name 'a'"):
    SegmentationFolder(dataset, 'val')


@pytest.mark.parametrize('remove', ['root', 'split', 'images'])
def test_missing_or_empty_split_says_where_images_are_expected(dataset, remove):
  if remove == 'root':
    root, split = dataset / 'nowhere', 'val'
  elif remove == 'split':
    root, split = dataset, 'test'
  else:
    for path in (dataset / 'images/val').iterdir():
      path.unlink()
    root, split = dataset, 'val'
  layout = re.escape(f'expected images {root}/images/{split}/<name>.jpg|.jpeg|.png and masks '
                     f'{root}/masks/{split}/<name>.png')
  with pytest.raises(UserError, match=layout):
    SegmentationFolder(root, split)


def test_value_beyond_classes_names_file_value_and_class_count(dataset):
  write_mask(dataset / 'masks/val/a.png', [[0, 1, 2], [3, 1, 0]])
  source = SegmentationFolder(dataset, 'val')
  expected = (re.escape(str(dataset / 'masks/val/a.png')) +
              r' contains value 3, a class index, but there are 3 classes \(0\.\.2; 255 = ignore\)')
  with pytest.raises(UserError, match=expected):
    source[0]
  with pytest.raises(UserError, match=expected):
    source.check_all()


def test_value_missing_from_label_map_is_named(dataset):
  source = SegmentationFolder(dataset, 'val', label_map={0: 0, 1: 1})
  with pytest.raises(UserError, match=r'contains value 2, which label_map does not map'):
    source[0]


def test_size_mismatch_names_both_files_and_sizes(dataset):
  write_image(dataset / 'images/val/a.png', 2, 4)
  source = SegmentationFolder(dataset, 'val')
  expected = re.escape(f'Image {dataset}/images/val/a.png is 4x2 but its mask '
                       f'{dataset}/masks/val/a.png is 3x2')
  with pytest.raises(UserError, match=expected):
    source[0]
  with pytest.raises(UserError, match=expected):
    source.check_all()


def test_exif_rotation_is_applied_as_opencv_does(dataset):
  (dataset / 'images/val/a.png').unlink()
  write_image(dataset / 'images/val/a.jpg', 3, 2, orientation=6)  # stored 2x3, shown 3x2
  source = SegmentationFolder(dataset, 'val')
  assert source[0]['image'].shape == (2, 3, 3)
  assert source.check_all().sum() == 5
  write_image(dataset / 'images/val/a.jpg', 2, 3, orientation=6)
  with pytest.raises(UserError, match=r'is 2x3 but its mask .* is 3x2.*EXIF orientation'):
    source[0]
  with pytest.raises(UserError, match=r'is 2x3 but its mask .* is 3x2.*EXIF orientation'):
    source.check_all()


@pytest.mark.parametrize('broken', ['image', 'mask'])
def test_corrupt_file_is_named(dataset, broken):
  path = dataset / ('images/val/a.png' if broken == 'image' else 'masks/val/a.png')
  path.write_bytes(b'not a png')
  source = SegmentationFolder(dataset, 'val')
  with pytest.raises(UserError, match=f'Cannot decode {broken} ' + re.escape(str(path))):
    source[0]
  with pytest.raises(UserError, match=f'Cannot decode {broken} ' + re.escape(str(path))):
    source.check_all()


def test_messages_are_one_line(dataset):
  write_mask(dataset / 'masks/val/a.png', [[0, 1, 2], [3, 1, 0]])
  with pytest.raises(UserError) as error:
    SegmentationFolder(dataset, 'val')[0]
  assert '\n' not in str(error.value)


# Whole-split check, pickling, and the pipeline.

def test_check_all_counts_class_pixels_over_the_split(dataset):
  write_pair(dataset, 'b', [[2, 2, 255, 0]])
  counts = SegmentationFolder(dataset, 'val').check_all(max_workers=2)
  assert counts.dtype == np.int64 and counts.tolist() == [3, 2, 3]


def test_sources_pickle_cheaply_and_read_the_same(tmp_path):
  voc, _ = write_voc(tmp_path)
  write_ade(tmp_path)
  (tmp_path / 'classes.txt').write_text(COLOURED_CLASSES)
  write_pair(tmp_path, 'a', [[0, 1, 2]])
  for source in (SegmentationFolder(tmp_path, 'val'), PascalVocFolder(voc, 'train'),
                 Ade20kFolder(tmp_path, 'train')):
    data = pickle.dumps(source)
    assert len(data) < 6000, type(source)  # paths and two 256-entry tables, no pixels
    copy = pickle.loads(data)
    assert copy.names == source.names and copy.classes == source.classes
    np.testing.assert_array_equal(copy[0]['label'], source[0]['label'])


def test_pipeline_batches_a_folder_source_of_two_sizes(tmp_path):
  (tmp_path / 'classes.txt').write_text(COLOURED_CLASSES)
  rng = np.random.default_rng(0)
  for index, (height, width) in enumerate([(24, 32)] * 3 + [(32, 24)] * 2):
    write_pair(tmp_path, f'{index}', rng.choice([0, 1, 2, 255], (height, width)))
  source = SegmentationFolder(tmp_path, 'val')
  iterator = pipeline.make_train_iterator(source, global_batch_size=2, seed=0,
                                          crop_size=(16, 16), resize_to=(24, 32),
                                          scale_range=(0.75, 1.25))
  batch = next(iterator)
  assert batch['image'].shape == (2, 16, 16, 3) and batch['label'].shape == (2, 16, 16)
  assert set(np.unique(batch['label'])) <= {0, 1, 2, 255}
  batches = list(pipeline.EvalBatches(source, batch_size=2, resize_to=(24, 32)))
  assert [b['valid'].tolist() for b in batches] == [[True, True], [True, False], [True, True]]
  assert [b['label'].shape[1:] for b in batches] == [(24, 32), (24, 32), (32, 24)]
  np.testing.assert_array_equal(batches[2]['label'][1], source[4]['label'])
