"""Tests of ``bisenet_jax.Segmenter``, the one Python API to a model: a checkpoint on JAX and its
exported ``.onnx`` on ONNX Runtime give the shared inference's labels, through the test Resize,
for arrays, files and batches of any sizes (tests/test_protocol.py: the resize each records)."""

import cv2
import numpy as np
import pytest

from bisenet_jax import Segmenter
from bisenet_jax.data import masks
from bisenet_jax.data.class_sets import CITYSCAPES_CLASSES
from bisenet_jax.errors import UserError
from bisenet_jax.export.__main__ import main as export_main
from bisenet_jax.specs import InferenceSpec
from test_export import save_reference_model, street_scenes
from test_predict import expected_labels

SIZES = ((61, 97), (45, 70))  # Odd sizes: no stride divides them.
# Small, and it changes both sizes (61x97 -> 75x120, 45x70 -> 77x120); the checkpoint records
# Cityscapes' 1024x2048.
RESIZE_TO = (90, 120)


@pytest.fixture(scope='module')
def fastscnn(tmp_path_factory):
  return save_reference_model(tmp_path_factory.mktemp('segmenter') / 'fastscnn', 'fastscnn')


@pytest.fixture(scope='module')
def segmenter(fastscnn):
  return Segmenter.load(fastscnn, resize_to=RESIZE_TO)


@pytest.fixture(scope='module')
def images():
  return [street_scenes(1, size, seed=index)[0] for index, size in enumerate(SIZES)]


def test_labels_are_the_shared_inferences_for_arrays_files_and_batches(segmenter, fastscnn,
                                                                       images, tmp_path):
  from bisenet_jax import load_pretrained
  model, variables = load_pretrained(fastscnn)
  expected = [expected_labels(model, variables, image, RESIZE_TO) for image in images]
  assert all(len(np.unique(labels)) >= 2 for labels in expected)
  np.testing.assert_array_equal(segmenter(images[0]), expected[0])
  path = tmp_path / 'street.png'
  assert cv2.imwrite(str(path), cv2.cvtColor(images[1], cv2.COLOR_RGB2BGR))
  np.testing.assert_array_equal(segmenter(path), expected[1])
  # Any sizes in a list, each run of one size in one pass; an array is one pass.
  listed = segmenter.batch([images[0], str(path), images[0]])
  for got, want in zip(listed, [expected[0], expected[1], expected[0]]):
    np.testing.assert_array_equal(got, want)
  stacked = segmenter.batch(np.stack([images[0], images[0]]))
  assert stacked.shape == (2, *SIZES[0]) and stacked.dtype == np.uint8
  np.testing.assert_array_equal(stacked[1], expected[0])


def test_logits_overlay_and_classes(segmenter, fastscnn, images):
  logits = segmenter(images[0], logits=True)
  assert logits.shape == (*SIZES[0], 19) and logits.dtype == np.float32
  labels = segmenter(images[0])
  np.testing.assert_array_equal(logits.argmax(-1), labels)
  np.testing.assert_array_equal(segmenter.overlay(images[0], labels),
                                masks.blend(images[0], segmenter.palette[labels]))
  assert segmenter.classes.names == CITYSCAPES_CLASSES.names
  assert segmenter.num_classes == 19 and segmenter.backend.name == 'jax'
  assert segmenter.resize_to == RESIZE_TO and Segmenter.load(fastscnn).resize_to == (1024, 2048)


def test_ignored_pixels_are_drawn_white_and_labels_beyond_uint8_refused(segmenter, images):
  labels = np.zeros(SIZES[0], np.uint8)
  labels[:10], labels[10:20] = 255, 19  # Ignored; no class (drawn black, as the PNGs draw it).
  colours = segmenter.colorize(labels)
  assert (colours[:10] == 255).all() and (colours[10:20] == 0).all()
  assert (colours[20:] == segmenter.palette[0]).all()
  np.testing.assert_array_equal(segmenter.overlay(images[0], labels),
                                masks.blend(images[0], colours))
  wide = labels.astype(np.int64)
  wide[0, 0] = 300
  with pytest.raises(UserError, match=r'class ids 0..255, these hold 0..300'):
    segmenter.colorize(wide)


@pytest.mark.slow  # An export; tests/test_serve.py serves an .onnx in the quick tier.
def test_the_exported_file_gives_the_checkpoints_labels(fastscnn, segmenter, images, tmp_path):
  path = tmp_path / 'fastscnn.onnx'
  export_main(['--checkpoint', str(fastscnn), '--output', str(path), '--format', 'onnx'])
  exported = Segmenter.load(path, resize_to=RESIZE_TO)
  assert exported.backend.name == 'onnxruntime' and exported.classes == segmenter.classes
  for image in images:
    agreement = (exported(image) == segmenter(image)).mean()
    assert agreement >= 0.999  # Float32 logits within ~1e-6: only exact ties may differ.
    np.testing.assert_allclose(exported(image, logits=True), segmenter(image, logits=True),
                               atol=1e-3)
  with pytest.raises(UserError, match='drop --mode'):
    Segmenter.load(path, inference=InferenceSpec(flip=True))


@pytest.mark.parametrize('image, message', [
    (np.zeros((8, 8, 3), np.float32), r'uint8 \[H, W, 3\]; got float32 \[8, 8, 3\]'),
    (np.zeros((8, 8), np.uint8), r'got uint8 \[8, 8\]'),
    (np.zeros((8, 8, 4), np.uint8), r'got uint8 \[8, 8, 4\]'),
    ('missing.png', 'Cannot decode image missing.png'),
])
def test_bad_images_are_one_line_errors(segmenter, image, message):
  with pytest.raises(UserError, match=message) as error:
    segmenter(image)
  assert '\n' not in str(error.value)


def test_a_checkpoint_of_other_classes_is_refused(fastscnn):
  with pytest.raises(UserError, match='19 classes, Pascal VOC has 21'):
    Segmenter.load(fastscnn, dataset='voc')
