"""Tests of bisenet_jax.data.opencv_resize: windows of OpenCV's resize, bit for bit."""

import cv2
import numpy as np
import pytest

from bisenet_jax.data import opencv_resize


def random_window(rng, size):
  """A non-empty window inside (height, width) `size`."""
  starts = [rng.integers(0, length) for length in size]
  return tuple(slice(start, rng.integers(start + 1, length + 1))
               for start, length in zip(starts, size))


def opencv(array, size, interpolation):
  return cv2.resize(array, (int(size[1]), int(size[0])), interpolation=interpolation)


def test_windows_equal_opencv_at_random_sizes_scales_and_windows():
  """Up- and downscales by up to 10x, unequal per axis, 1-pixel sides, exact 1x and 2x on one
  axis: every window equals the same window of OpenCV's whole output."""
  rng = np.random.default_rng(0)
  checked = 0
  for case in range(1500):
    size = tuple(rng.integers(1, 48, 2))
    target = tuple(rng.integers(1, 120, 2))
    if case % 5 == 0:
      target = (size[0] * (1 + case % 2), target[1])
    if not opencv_resize.is_windowable(size, target):
      continue
    image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    label = rng.integers(0, 256, size, dtype=np.uint8)
    window = random_window(rng, target) if case % 3 else (slice(0, target[0]), slice(0, target[1]))
    np.testing.assert_array_equal(opencv_resize.linear(image, target, *window),
                                  opencv(image, target, cv2.INTER_LINEAR)[window],
                                  err_msg=f'{size} -> {target} at {window}')
    labels = opencv_resize.nearest(label, target, *window)
    np.testing.assert_array_equal(labels, opencv(label, target, cv2.INTER_NEAREST)[window])
    np.testing.assert_array_equal(
        opencv_resize.nearest_into(label, target, *window, np.empty_like(labels)),
        np.bincount(labels.ravel(), minlength=256))
    checked += 1
  assert checked > 1400


@pytest.mark.parametrize('scale', [0.5004, 0.83, 1.0, 1.37, 1.999])
def test_a_crop_of_a_resized_full_frame_equals_opencv(scale):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
  target = (int(1024 * scale + 0.5), int(2048 * scale + 0.5))
  left = min(117, target[1] - 1024)
  window = (slice(target[0] - min(1024, target[0]), target[0]), slice(left, left + 1024))
  np.testing.assert_array_equal(opencv_resize.linear(image, target, *window),
                                opencv(image, target, cv2.INTER_LINEAR)[window])


def test_an_exact_2x_downscale_is_left_to_opencv():
  """OpenCV computes it as INTER_AREA, which the window arithmetic does not reproduce."""
  assert not opencv_resize.is_windowable((64, 128), (32, 64))
  assert opencv_resize.is_windowable((64, 128), (32, 65))
  assert opencv_resize.is_windowable((64, 128), (64, 64))


def test_linear_taps_follow_opencvs_rules_at_both_edges():
  # 4 -> 8 pixels: position (x + 0.5) / 2 - 0.5 = -0.25, 0.25, ..., 3.25.
  taps, weights = opencv_resize.linear_taps(4, 8, 0, 8, clamp_weights=True)
  np.testing.assert_array_equal(taps[[0, 1, 7]], [[0, 1], [0, 1], [3, 3]])
  np.testing.assert_array_equal(weights[[0, 1, 7]], [[2048, 0], [1536, 512], [2048, 0]])
  taps, weights = opencv_resize.linear_taps(4, 8, 0, 8, clamp_weights=False)
  np.testing.assert_array_equal(taps[[0, 7]], [[0, 0], [3, 3]])
  np.testing.assert_array_equal(weights[[0, 7]], [[512, 1536], [1536, 512]])


@pytest.mark.parametrize('flip', [False, True])
def test_windows_written_into_a_larger_array_at_an_offset_and_flipped(flip):
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
  label = rng.integers(0, 256, (30, 50), dtype=np.uint8)
  target, window = (41, 77), (slice(5, 25), slice(10, 60))
  image_out = np.full((32, 64, 3), 7, np.uint8)
  label_out = np.full((32, 64), 7, np.uint8)
  opencv_resize.linear_into(image, target, *window, image_out, (3, 9), flip)
  opencv_resize.nearest_into(label, target, *window, label_out, (3, 9))
  for out, array, interpolation, flipped in ((image_out, image, cv2.INTER_LINEAR, flip),
                                             (label_out, label, cv2.INTER_NEAREST, False)):
    want = opencv(array, target, interpolation)[window]
    np.testing.assert_array_equal(out[3:23, 9:59], want[:, ::-1] if flipped else want)
    outside = np.ones(out.shape[:2], bool)
    outside[3:23, 9:59] = False
    assert (out[outside] == 7).all()
