"""Tests of bisenet_jax.data.tfds: TFDS Cityscapes read without TensorFlow."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bisenet_jax.data import tfds as tfds_source
from bisenet_jax.data.cityscapes import LABEL_ID_TO_TRAIN_ID
from bisenet_jax.errors import UserError


def test_mock_dataset_reads_as_train_id_samples():
  with tfds.testing.mock_data(num_examples=2):
    source = tfds_source.TfdsCityscapes('val')
    raw = tfds.data_source('cityscapes/semantic_segmentation', split='validation')
    assert len(source) == 2
    sample, example = source[1], raw[1]
  assert sample['image'].shape == (1024, 2048, 3) and sample['image'].dtype == np.uint8
  np.testing.assert_array_equal(sample['image'], example['image_left'])
  assert sample['label'].shape == (1024, 2048) and sample['label'].dtype == np.uint8
  expected_label = LABEL_ID_TO_TRAIN_ID[example['segmentation_label'][..., 0]]
  np.testing.assert_array_equal(sample['label'], expected_label)
  assert sample['name'].endswith('/' + example['image_id'])


def test_records_map_label_ids_and_decode_the_image_id(monkeypatch):
  example = {'image_id': b'bonn_000001_000019',
             'image_left': np.zeros((1, 5, 3), np.uint8),
             'segmentation_label': np.array([[[7], [26], [33], [0], [29]]], np.uint8)}
  requests = []

  def data_source(name, **kwargs):
    requests.append((name, kwargs))
    return [example]
  monkeypatch.setattr(tfds, 'data_source', data_source)

  sample = tfds_source.TfdsCityscapes('train', data_dir='/data')[0]

  assert requests == [('cityscapes/semantic_segmentation',
                       {'split': 'train', 'data_dir': '/data', 'download': False})]
  assert sample['name'] == 'bonn/bonn_000001_000019'
  np.testing.assert_array_equal(sample['label'], [[0, 13, 18, 255, 255]])


def test_unprepared_dataset_says_how_to_build_it(tmp_path):
  expected = r'tfds build cityscapes/semantic_segmentation .*--file_format=array_record'
  with pytest.raises(UserError, match=expected):
    tfds_source.TfdsCityscapes('train', data_dir=tmp_path)
  assert not any(tmp_path.iterdir())  # nothing was downloaded or prepared
