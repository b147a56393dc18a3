"""Tests of ``bisenet_jax.Segmenter``, the one Python API to a model: a checkpoint on JAX and its
exported ``.onnx`` on ONNX Runtime give the shared inference's labels for arrays, files and
batches of any sizes."""

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


@pytest.fixture(scope='module')
def fastscnn(tmp_path_factory):
  return save_reference_model(tmp_path_factory.mktemp('segmenter') / 'fastscnn', 'fastscnn')


@pytest.fixture(scope='module')
def segmenter(fastscnn):
  return Segmenter.load(fastscnn)


@pytest.fixture(scope='module')
def images():
  return [street_scenes(1, size, seed=index)[0] for index, size in enumerate(SIZES)]


def test_labels_are_the_shared_inferences_for_arrays_files_and_batches(segmenter, fastscnn,
                                                                       images, tmp_path):
  from bisenet_jax import load_pretrained
  model, variables = load_pretrained(fastscnn)
  expected = [expected_labels(model, variables, image) for image in images]
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


def test_logits_overlay_and_classes(segmenter, images):
  logits = segmenter(images[0], logits=True)
  assert logits.shape == (*SIZES[0], 19) and logits.dtype == np.float32
  labels = segmenter(images[0])
  np.testing.assert_array_equal(logits.argmax(-1), labels)
  np.testing.assert_array_equal(segmenter.overlay(images[0], labels),
                                masks.blend(images[0], segmenter.palette[labels]))
  assert segmenter.classes.names == CITYSCAPES_CLASSES.names
  assert segmenter.num_classes == 19 and segmenter.backend.name == 'jax'


@pytest.mark.slow  # An export; tests/test_serve.py serves an .onnx in the quick tier.
def test_the_exported_file_gives_the_checkpoints_labels(fastscnn, segmenter, images, tmp_path):
  path = tmp_path / 'fastscnn.onnx'
  export_main(['--checkpoint', str(fastscnn), '--output', str(path), '--format', 'onnx'])
  exported = Segmenter.load(path)
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
