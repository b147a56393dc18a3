"""OpenCV's resize, one window at a time: the pixels of `cv2.resize(src, dsize)` inside a window,
bit for bit, computed from the source pixels that window reads and no others.

The training crop keeps a 1024x1024 window of a frame resized by up to 2x (4096x2048): resizing
the whole frame first, as the reference does, computes up to 8 times the pixels the crop keeps,
and costs more CPU than everything else the augmentation does. OpenCV cannot resize a window of
its output by itself: resizing a cut-out of the source changes the scale, hence every
interpolation weight. So this module reproduces OpenCV's arithmetic (resize.cpp, the same in
OpenCV 4 and 5):

* INTER_NEAREST: destination index d reads source index `min(floor(d * (1 / (dst / src))),
  src - 1)`, computed in double.
* INTER_LINEAR on uint8 (fixed point, 11 bits): destination x has the float32 position
  `f = float((x + 0.5) * (1 / (dst / src)) - 0.5)`, taps `floor(f)` and `floor(f) + 1` with
  weights `round(float32(1 - frac) * 2048)` and `round(frac * 2048)` (round half to even). Along
  x, a tap left of the image becomes tap 0 with weight 2048 (and likewise on the right); along
  y, the rows are clamped but the weights are not. Each needed source row is interpolated along
  x into int32 (`p0 * w0 + p1 * w1`), then pairs of those rows are combined along y as
  `(((v0 >> 4) * w0 >> 16) + ((v1 >> 4) * w1 >> 16) + 2) >> 2` (OpenCV's vector and scalar
  code both compute this).

One case is not reproduced: OpenCV turns an exact 2x downscale along both axes into INTER_AREA;
`is_windowable` says when, and callers resize the whole frame with OpenCV instead. Kernels are
compiled by numba (cached on disk after the first run) because these are gathers along rows
that NumPy would run as several full-size temporaries.
"""

import numba
import numpy as np

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def is_windowable(src_size, dst_size):
  """Whether `linear` reproduces cv2.resize(INTER_LINEAR) from (height, width) `src_size` to
  `dst_size`: everywhere except OpenCV's exact 2x downscale, which it computes as INTER_AREA."""
  scales = [src / dst for src, dst in zip(src_size, dst_size)]
  return not all(abs(scale - 2) < np.finfo(np.float64).eps for scale in scales)


def nearest_indices(src_length, dst_length, start, stop):
  """Source indices int64 [stop - start] that INTER_NEAREST reads for destination indices
  [start, stop) of an axis resized from `src_length` to `dst_length`."""
  inverse_scale = 1.0 / (dst_length / src_length)
  return np.minimum(np.floor(np.arange(start, stop) * inverse_scale).astype(np.int64),
                    src_length - 1)


def linear_taps(src_length, dst_length, start, stop, *, clamp_weights):
  """INTER_LINEAR's taps for destination indices [start, stop) of an axis resized from
  `src_length` to `dst_length`: source indices int64 [n, 2] and fixed-point weights int64 [n, 2].

  Args:
    clamp_weights: OpenCV's x-axis rule (a tap outside the image gets the edge pixel at full
      weight); False is its y-axis rule (indices clamped, weights kept).
  """
  scale = 1.0 / (dst_length / src_length)
  position = ((np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
  first = np.floor(position).astype(np.int64)
  fraction = position - first.astype(np.float32)
  if clamp_weights:
    outside = (first < 0) | (first >= src_length - 1)
    fraction = np.where(outside, np.float32(0), fraction)
    first = np.clip(first, 0, src_length - 1)
  indices = np.clip(np.stack([first, first + 1], axis=1), 0, src_length - 1)
  weights = np.stack([np.float32(1) - fraction, fraction], axis=1) * np.float32(_COEF_SCALE)
  return indices, np.rint(weights).astype(np.int64)


def nearest(label, dst_size, rows, cols):
  """`cv2.resize(label, (dst_size[1], dst_size[0]), interpolation=INTER_NEAREST)[rows, cols]`
  for uint8 [H, W] `label` and slices `rows`, `cols`: uint8 [len(rows), len(cols)]."""
  out = np.empty((rows.stop - rows.start, cols.stop - cols.start), np.uint8)
  nearest_into(label, dst_size, rows, cols, out)
  return out


def nearest_into(label, dst_size, rows, cols, out, at=(0, 0)):
  """Writes `nearest(label, dst_size, rows, cols)` into uint8 [H', W'] `out` with its top-left
  pixel at `at` (row, column), and counts its values as it goes.

  Returns:
    int64 [256]: how often each value occurs in the window.
  """
  counts = np.zeros(256, np.int64)
  _gather_and_count(np.asarray(label),
                    nearest_indices(label.shape[0], dst_size[0], rows.start, rows.stop),
                    nearest_indices(label.shape[1], dst_size[1], cols.start, cols.stop),
                    out, *at, counts)
  return counts


def linear(image, dst_size, rows, cols):
  """`cv2.resize(image, (dst_size[1], dst_size[0]), interpolation=INTER_LINEAR)[rows, cols]` for
  uint8 [H, W, C] `image` and slices `rows`, `cols`, where `is_windowable`: uint8
  [len(rows), len(cols), C]."""
  out = np.empty((rows.stop - rows.start, cols.stop - cols.start, image.shape[2]), np.uint8)
  linear_into(image, dst_size, rows, cols, out)
  return out


def linear_into(image, dst_size, rows, cols, out, at=(0, 0), flip=False):
  """Writes `linear(image, dst_size, rows, cols)` into C-contiguous uint8 [H', W', C] `out` with
  its top-left pixel at `at` (row, column), its columns reversed if `flip`."""
  height, width, channels = image.shape
  row_taps, row_weights = linear_taps(height, dst_size[0], rows.start, rows.stop,
                                      clamp_weights=False)
  col_taps, col_weights = linear_taps(width, dst_size[1], cols.start, cols.stop,
                                      clamp_weights=True)
  if flip:  # Interpolating the columns in reverse order writes the mirrored row.
    col_taps, col_weights = col_taps[::-1], col_weights[::-1]
  # Rows are interpolated flat, element by element: tap k of element (x, c) is
  # col_taps[x, k] * C + c, with weight col_weights[x, k].
  element_taps = (col_taps[:, :, None] * channels + np.arange(channels)).transpose(1, 0, 2)
  element_weights = np.repeat(col_weights.T, channels, axis=1)
  _interpolate(np.asarray(image).reshape(height, width * channels), row_taps.astype(np.uintp),
               row_weights.astype(np.int32), element_taps.reshape(2, -1).astype(np.uintp),
               element_weights.astype(np.int32), out.reshape(out.shape[0], -1), at[0],
               at[1] * channels)


@numba.njit(cache=True, nogil=True)
def _gather_and_count(src, rows, cols, out, top, left, counts):
  for i in range(rows.shape[0]):
    src_row, out_row = src[rows[i]], out[top + i]
    for j in range(cols.shape[0]):
      value = src_row[cols[j]]
      out_row[left + j] = value
      counts[value] += 1


@numba.njit(cache=True, nogil=True)
def _interpolate_row(src_row, taps, weights, out):
  """One flat source row interpolated along x: int32 [elements]."""
  for k in range(out.shape[0]):
    out[k] = np.int32(src_row[taps[0, k]]) * weights[0, k] + \
        np.int32(src_row[taps[1, k]]) * weights[1, k]


@numba.njit(cache=True, nogil=True)
def _interpolate(src, row_taps, row_weights, taps, weights, out, top, left):
  """Window rows from flat source rows into flat `out` rows from (top, left) on: each needed
  source row is interpolated along x once (rows[j] holds source row held[j]), then pairs are
  combined along y."""
  elements = taps.shape[1]
  rows = np.empty((2, elements), np.int32)
  held = np.full(2, -1, np.int64)
  for i in range(row_taps.shape[0]):
    upper, lower = np.int64(row_taps[i, 0]), np.int64(row_taps[i, 1])
    if held[0] == upper:
      u = 0
    elif held[1] == upper:
      u = 1
    else:  # Keep the buffer that already holds the lower row, if one does.
      u = 1 if held[0] == lower else 0
      _interpolate_row(src[upper], taps, weights, rows[u])
      held[u] = upper
    l = 1 - u
    if held[l] != lower:
      _interpolate_row(src[lower], taps, weights, rows[l])
      held[l] = lower
    _combine_rows(rows[u], rows[l], np.int32(row_weights[i, 0]), np.int32(row_weights[i, 1]),
                  out[top + i, left:left + elements])


@numba.njit(cache=True, nogil=True)
def _combine_rows(above, below, w0, w1, out):
  for k in range(out.shape[0]):
    out[k] = np.uint8(((((above[k] >> 4) * w0) >> 16) + (((below[k] >> 4) * w1) >> 16) + 2) >> 2)
