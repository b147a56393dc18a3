"""Tests of bisenet_jax.data.folder: class lists, label mapping, the folder, VOC and ADE20K layouts,
and the one-line message of every bad input."""

import json
import pickle
import re

import cv2
import numpy as np
import pytest
from PIL import Image

from bisenet_jax.data import cityscapes, folder, pipeline
from bisenet_jax.data.folder import (Ade20kFolder, ClassSet, PascalVocFolder, SegmentationFolder,
                                     make_label_table, read_classes_file)
from bisenet_jax.errors import UserError

COLOURED_CLASSES = '# name R G B\nbackground 0 0 0\n\nroad surface 128 64 128\n  person 220 20 60\n'
THREE_CLASSES = ('background', 'road surface', 'person')


def write_image(path, height, width, seed=0, orientation=None):
  """Writes a random RGB image (format from the suffix), with an EXIF orientation if given.

  Returns the image as written, RGB.
  """
  image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  if orientation is not None:
    pil = Image.fromarray(image)
    tags = pil.getexif()
    tags[0x0112] = orientation
    pil.save(path, exif=tags)
  else:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  return image


def write_mask(path, values, palette=None, image_format=None):
  """Writes uint8 `values` as a grey PNG, or as a palette PNG when `palette` is given."""
  mask = Image.fromarray(np.asarray(values, np.uint8))
  if palette is not None:
    mask.putpalette(np.asarray(palette, np.uint8).tobytes())
    assert mask.mode == 'P'
  path.parent.mkdir(parents=True, exist_ok=True)
  mask.save(path, format=image_format)
  return path


def write_pair(root, name, values, split='val', image_suffix='.png', **mask_options):
  """Writes images/<split>/<name><suffix> and masks/<split>/<name>.png; returns their paths."""
  values = np.asarray(values, np.uint8)
  image_path = root / 'images' / split / f'{name}{image_suffix}'
  write_image(image_path, *values.shape)
  return image_path, write_mask(root / 'masks' / split / f'{name}.png', values, **mask_options)


@pytest.fixture
def dataset(tmp_path):
  """A 3-class folder dataset with one 2x3 frame 'a' in 'val'; returns its root."""
  (tmp_path / 'classes.txt').write_text(COLOURED_CLASSES)
  write_pair(tmp_path, 'a', [[0, 1, 2], [255, 1, 0]])
  return tmp_path


def both(first, second):
  """A regex matching a message that names `first`, then `second`."""
  return re.escape(str(first)) + '.*' + re.escape(str(second))


def reference_labels(raw, num_classes, ignore_index=255, reduce_zero_label=False,
                     label_map=None):
  """What a mask should become, written directly in NumPy: (labels, refused mask)."""
  raw = raw.astype(np.int64)
  if label_map:
    labels = np.full(raw.shape, -1)
    for value, target in label_map.items():
      labels[raw == value] = target
  elif reduce_zero_label:
    labels = np.where(raw == 0, 255, raw - 1)
  else:
    labels = raw.copy()
  labels[raw == ignore_index] = 255
  refused = (labels < 0) | ((labels >= num_classes) & (labels != 255))
  if not label_map:  # without a map, only 0 (reduce_zero_label) and ignore_index become 255
    allowed_ignore = (raw == ignore_index) | ((raw == 0) & reduce_zero_label)
    refused |= (labels == 255) & ~allowed_ignore
  return np.where(refused, 255, labels).astype(np.uint8), refused


# Class sets.

def test_default_palette_is_the_voc_colour_map_and_never_repeats():
  palette = folder.default_palette(256)
  assert palette.dtype == np.uint8 and palette.shape == (256, 3)
  assert palette[0].tolist() == [0, 0, 0]
  assert palette[1].tolist() == [128, 0, 0]  # aeroplane
  assert palette[2].tolist() == [0, 128, 0]
  assert palette[15].tolist() == [192, 128, 128]  # person
  assert palette[20].tolist() == [0, 64, 128]  # tvmonitor
  assert palette[255].tolist() == [224, 224, 192]  # VOC's boundary colour
  assert len({tuple(colour) for colour in palette.tolist()}) == 256


def test_preset_class_sets():
  assert folder.VOC_CLASSES.num_classes == 21
  assert folder.VOC_CLASSES.names[0] == 'background' and folder.VOC_CLASSES.names[15] == 'person'
  np.testing.assert_array_equal(folder.VOC_CLASSES.palette, folder.default_palette(21))
  ade = folder.ADE20K_CLASSES
  assert ade.num_classes == 150 and ade.palette.shape == (150, 3)
  assert ade.names[:3] == ('wall', 'building', 'sky') and ade.names[-1] == 'flag'
  assert ade.names[7] == 'bed'  # mmsegmentation spells it 'bed '
  assert ade.palette[0].tolist() == [120, 120, 120] and ade.palette[-1].tolist() == [92, 0, 255]
  assert folder.CITYSCAPES_CLASSES.names == cityscapes.CLASS_NAMES
  np.testing.assert_array_equal(folder.CITYSCAPES_CLASSES.palette, cityscapes.PALETTE)


def test_class_set_round_trips_through_json_and_is_read_only():
  classes = ClassSet(THREE_CLASSES, [(0, 0, 0), (128, 64, 128), (220, 20, 60)])
  data = json.loads(json.dumps(classes.to_json()))
  assert data == {'names': list(THREE_CLASSES),
                  'palette': [[0, 0, 0], [128, 64, 128], [220, 20, 60]]}
  assert ClassSet.from_json(data) == classes
  assert ClassSet.from_json(data) != ClassSet(THREE_CLASSES)
  assert classes.palette.dtype == np.uint8 and not classes.palette.flags.writeable
  assert pickle.loads(pickle.dumps(classes)) == classes
  with pytest.raises(UserError, match="keys 'names' and 'palette'"):
    ClassSet.from_json({'names': list(THREE_CLASSES)})


@pytest.mark.parametrize('names, palette, message', [
    (('only',), None, '2 to 255 classes, got 1'),
    (('a', 'b', 'a'), None, r"unique, but \['a'\] repeat"),
    (('a', ''), None, 'non-empty'),
    (('a', 'b'), [(0, 0, 0)], r'shape \(1, 3\)'),
    (('a', 'b'), [(0, 0, 0), (0, 0, 256)], '0..255'),
])
def test_invalid_class_set_is_refused(names, palette, message):
  with pytest.raises(UserError, match=message):
    ClassSet(names, palette)


def test_classes_file_with_colours_comments_blank_lines_and_spaces(tmp_path):
  path = tmp_path / 'classes.txt'
  path.write_bytes(b'\xef\xbb\xbf' + COLOURED_CLASSES.encode())  # with a byte-order mark
  classes = read_classes_file(path)
  assert classes.names == THREE_CLASSES
  assert classes.palette.tolist() == [[0, 0, 0], [128, 64, 128], [220, 20, 60]]


def test_classes_file_without_colours_gets_the_default_palette(tmp_path):
  path = tmp_path / 'classes.txt'
  path.write_text('background\nplant\nlayer 2\n')
  classes = read_classes_file(path)
  assert classes.names == ('background', 'plant', 'layer 2')
  np.testing.assert_array_equal(classes.palette, folder.default_palette(3))


@pytest.mark.parametrize('text, message', [
    ('a 1 2 3\nb\n', r":2: class 'b' lacks a colour but line 1 has one"),
    ('a\n\nb 1 2 3\n', r":3: class 'b' has a colour but line 1 lacks one"),
    ('a\nb\na\n', r":3: class 'a' is already on line 1"),
    ('a 0 0 0\nb 0 300 0\n', r":2: the colour 0 300 0 of 'b' is outside 0\.\.255"),
    ('a 0 0 0\nb -1 0 0\n', r":2: the colour -1 0 0 of 'b' is outside 0\.\.255"),
    ('crack\n', ' lists 1 class, but a model needs 2 to 255 .*background'),
    ('# nothing\n\n', ' lists 0 classes'),
])
def test_bad_classes_file_names_file_and_line(tmp_path, text, message):
  path = tmp_path / 'classes.txt'
  path.write_text(text)
  with pytest.raises(UserError, match=re.escape(str(path)) + message):
    read_classes_file(path)


def test_missing_classes_file_says_what_to_write(tmp_path):
  with pytest.raises(UserError, match=re.escape(str(tmp_path / 'classes.txt')) +
                     ' does not exist: write one class name per line'):
    SegmentationFolder(tmp_path, 'val')


# Label mapping.

@pytest.mark.parametrize('options', [
    dict(),
    dict(ignore_index=200),
    dict(reduce_zero_label=True),
    dict(reduce_zero_label=True, ignore_index=7),
    dict(label_map={10: 0, 20: 1, 30: 2, 40: 255}),
    dict(label_map={'10': '2', '11': '0'}, ignore_index=0),
])
def test_label_table_equals_numpy(options):
  raw = np.arange(256, dtype=np.uint8).reshape(16, 16)
  table, refused = make_label_table(3, **options)
  label_map = options.get('label_map')
  if label_map:
    options = {**options, 'label_map': {int(k): int(v) for k, v in label_map.items()}}
  want_labels, want_refused = reference_labels(raw, 3, **options)
  np.testing.assert_array_equal(table[raw], want_labels)
  np.testing.assert_array_equal(refused[raw], want_refused)
  assert table.dtype == np.uint8 and table.shape == (256,) and refused.shape == (256,)


def test_label_table_examples():
  table, refused = make_label_table(3, reduce_zero_label=True)
  assert table[[0, 1, 3, 255]].tolist() == [255, 0, 2, 255]
  assert refused[[0, 1, 3, 4, 254, 255]].tolist() == [False, False, False, True, True, False]
  table, refused = make_label_table(3, ignore_index=200)
  assert table[[0, 2, 200]].tolist() == [0, 2, 255]
  assert refused[[3, 200, 255]].tolist() == [True, False, True]


@pytest.mark.parametrize('options, message', [
    (dict(ignore_index=1), 'ignore_index 1 is also class 1 of 3'),
    (dict(reduce_zero_label=True, ignore_index=2), 'ignore_index 2 is also class 1 of 3'),
    (dict(label_map={255: 0}), 'ignore_index 255 is also class 0 of 3'),
    (dict(ignore_index=256), 'ignore_index must be a mask value 0..255'),
    (dict(label_map={1: 0}, reduce_zero_label=True), 'either label_map or reduce_zero_label'),
    (dict(label_map={1: 3}), r'label_map entry 1: 3 is out of range.*classes 0\.\.2'),
    (dict(label_map={256: 0}), 'label_map entry 256: 0 is out of range'),
    (dict(label_map={'x': 0}), "label_map entry 'x': 0 is not an integer pair"),
])
def test_invalid_label_mapping_is_refused(options, message):
  with pytest.raises(UserError, match=message):
    make_label_table(3, **options)


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
               palette=folder.default_palette(256))
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
  assert train.classes == folder.VOC_CLASSES
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
  assert train.classes == folder.ADE20K_CLASSES
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
  Image.fromarray(np.zeros((2, 3), np.uint16)).save(dataset / 'masks/val/a.png')
  with pytest.raises(UserError, match="has pixel format 'I;16'.*8-bit single-channel"):
    SegmentationFolder(dataset, 'val')[0]


def test_jpeg_mask_is_refused_by_its_content_not_its_name(dataset):
  write_mask(dataset / 'masks/val/a.png', [[0, 1, 2], [2, 1, 0]], image_format='JPEG')
  with pytest.raises(UserError, match=re.escape(str(dataset / 'masks/val/a.png')) +
                     ' is a JPEG file, whose lossy compression changes class indices'):
    SegmentationFolder(dataset, 'val')[0]


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
                                          crop_size=(16, 16), base_size=(32, 24),
                                          scale_range=(0.75, 1.25))
  batch = next(iterator)
  assert batch['image'].shape == (2, 16, 16, 3) and batch['label'].shape == (2, 16, 16)
  assert set(np.unique(batch['label'])) <= {0, 1, 2, 255}
  batches = list(pipeline.EvalBatches(source, batch_size=2, base_size=(32, 24)))
  assert [b['valid'].tolist() for b in batches] == [[True, True], [True, False], [True, True]]
  assert [b['label'].shape[1:] for b in batches] == [(24, 32), (24, 32), (32, 24)]
  np.testing.assert_array_equal(batches[2]['label'][1], source[4]['label'])
