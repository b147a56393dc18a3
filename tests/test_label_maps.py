"""Tests of bisenet_jax.data.label_maps: mask values -> class indices, against NumPy."""

import numpy as np
import pytest

from bisenet_jax.data.label_maps import make_label_table
from bisenet_jax.errors import UserError
from labelled_files import reference_labels


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
