"""Normalisation: bit-identical to the reference's OpenCV 4 calls, on the host and the device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bisenet_jax.data import normalization

SHAPES = ['every_value', '1x1', '3x1', '1x3', '3x3', '1x7', '7x1', '4x4', '16x16']


@pytest.mark.parametrize('shape', SHAPES)
def test_host_normalize_equals_opencv4_bit_for_bit(opencv4_golden, shape):
  """OpenCV 5 differs from OpenCV 4 here (by up to 215 on 1x1 images); the project must not."""
  image = opencv4_golden[f'normalize/{shape}/input']
  out = normalization.normalize(image)
  assert out.dtype == np.float32 and out.shape == image.shape
  np.testing.assert_array_equal(out, opencv4_golden[f'normalize/{shape}/output'])


def test_table_is_the_reference_arithmetic():
  """float32 subtraction of the float32 mean, float64 multiplication by 1 / std."""
  mean, std = np.array(normalization.MEAN_RGB), np.array(normalization.STD_RGB)
  values = np.arange(256, dtype=np.float32)[:, None]
  exact = ((values - mean.astype(np.float32)).astype(np.float64) * (1 / std)).astype(np.float32)
  np.testing.assert_array_equal(normalization.normalization_table(), exact)
  np.testing.assert_allclose(normalization.normalization_table(), (values - mean) / std,
                             rtol=0, atol=1e-6)


def test_channel_order_is_rgb():
  red = np.zeros((1, 1, 3), np.uint8)
  red[..., 0] = 255
  expected = [(255 - 123.675) / 58.395, -116.28 / 57.12, -103.53 / 57.375]
  np.testing.assert_allclose(normalization.normalize(red)[0, 0], expected, rtol=1e-6)


def test_non_uint8_or_non_rgb_input_is_refused():
  with pytest.raises(ValueError, match='uint8'):
    normalization.normalize(np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r'\[\.\.\., 3\]'):
    normalization.normalize(np.zeros((2, 2), np.uint8))


def test_device_normalize_equals_host_bit_for_bit():
  images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), np.uint8)
  on_device = jax.jit(normalization.normalize_on_device)(images)
  np.testing.assert_array_equal(np.asarray(on_device), normalization.normalize(images))


def test_device_normalize_zeroes_everything_outside_the_content_box():
  images = np.random.default_rng(1).integers(0, 256, (3, 6, 8, 3), np.uint8)
  content = np.array([[0, 0, 6, 8], [1, 2, 3, 4], [5, 7, 1, 1]], np.int32)
  out = np.asarray(jax.jit(normalization.normalize_on_device)(images, jnp.asarray(content)))
  host = normalization.normalize(images)
  for row, (top, left, height, width) in enumerate(content):
    inside = np.zeros((6, 8), bool)
    inside[top:top + height, left:left + width] = True
    np.testing.assert_array_equal(out[row][inside], host[row][inside])
    assert (out[row][~inside] == 0).all()
