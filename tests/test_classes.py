"""Tests of bisenet_jax.data.classes and class_sets: class sets, their JSON, classes.txt files."""

import json
import pickle
import re

import numpy as np
import pytest

from bisenet_jax.data import cityscapes
from bisenet_jax.data.class_sets import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from bisenet_jax.data.classes import read_classes_file
from bisenet_jax.specs import ClassSet, default_palette
from bisenet_jax.errors import UserError
from labelled_files import COLOURED_CLASSES, THREE_CLASSES


def test_default_palette_is_the_voc_colour_map_and_never_repeats():
  palette = default_palette(256)
  assert palette.dtype == np.uint8 and palette.shape == (256, 3)
  assert palette[0].tolist() == [0, 0, 0]
  assert palette[1].tolist() == [128, 0, 0]  # aeroplane
  assert palette[2].tolist() == [0, 128, 0]
  assert palette[15].tolist() == [192, 128, 128]  # person
  assert palette[20].tolist() == [0, 64, 128]  # tvmonitor
  assert palette[255].tolist() == [224, 224, 192]  # VOC's boundary colour
  assert len({tuple(colour) for colour in palette.tolist()}) == 256


def test_preset_class_sets():
  assert VOC_CLASSES.num_classes == 21
  assert VOC_CLASSES.names[0] == 'background' and VOC_CLASSES.names[15] == 'person'
  np.testing.assert_array_equal(VOC_CLASSES.palette, default_palette(21))
  ade = ADE20K_CLASSES
  assert ade.num_classes == 150 and ade.palette.shape == (150, 3)
  assert ade.names[:3] == ('wall', 'building', 'sky') and ade.names[-1] == 'flag'
  assert ade.names[7] == 'bed'  # mmsegmentation spells it 'bed '
  assert ade.palette[0].tolist() == [120, 120, 120] and ade.palette[-1].tolist() == [92, 0, 255]
  assert CITYSCAPES_CLASSES.names == cityscapes.CLASS_NAMES
  np.testing.assert_array_equal(CITYSCAPES_CLASSES.palette, cityscapes.PALETTE)


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
  np.testing.assert_array_equal(classes.palette, default_palette(3))


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
