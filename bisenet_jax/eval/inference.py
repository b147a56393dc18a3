"""The one inference function: whole / sliding-window, with optional flip and multi-scale TTA.

Evaluation, prediction, training-time evaluation and benchmarks all call ``segment_logits`` (or
``predict_labels``), so they cannot drift apart. The model enters as ``logits_fn``, a pure JAX
function ``f32[N, h, w, 3] -> float[N, h', w', K]`` (NHWC; logits at any stride, e.g. a closure
over ``model.apply`` in eval mode). Every shape and window position is computed in Python from
static shapes, so the whole computation jit-compiles with only the images traced::

  infer = jax.jit(functools.partial(segment_logits, logits_fn, out_size=(1024, 2048)))
  logits = infer(images)

The procedure is sssegmentation's ``auginference`` + ``inference`` followed by test.py's resize
(docs/reference.md §6), for the views a ``specs.InferenceSpec`` describes:

* For each scale s: resize the image bilinearly by s (and, with ``flip``, also run its
  left-right mirror and mirror the logits back).
* ``'whole'``: run ``logits_fn`` on the full image. ``'slide'``: run it on a grid of crop
  windows, upsample each window's logits to the window size, sum them into a full-size canvas
  and divide by how many windows cover each pixel.
* Upsample every view's logits bilinearly straight to ``out_size`` (the label's size) and
  average them. No softmax anywhere (``use_probs_before_resize=False``).

The reported BiSeNetV1 numbers use ``'whole'``, ``scales=(1.0,)``, ``flip=False`` (the default
``InferenceSpec()``): one forward pass and one upsample of the stride-8 logits to 1024x2048.
The spec is validated where it is built, so nothing here raises a user error while tracing.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bisenet_jax.models.layers import resize_bilinear
from bisenet_jax.specs import InferenceSpec

LogitsFn = Callable[[jax.Array], jax.Array]


def segment_logits(logits_fn: LogitsFn, images: jax.Array, out_size: Sequence[int],
                   spec: InferenceSpec = InferenceSpec()) -> jax.Array:
  """Class logits at ``out_size``, averaged over the test-time views ``spec`` asks for.

  Args:
    logits_fn: the model, ``f32[N, h, w, 3] -> float[N, h', w', K]`` (NHWC).
    images: f32[N, H, W, 3] normalised RGB (NHWC).
    out_size: (height, width) of the output, normally the original image (label) size.
    spec: the views. ``input_size`` first resizes the images (bilinearly) to that size.
      'slide' windows never exceed the image: an image smaller than a window is one window.
      Scale s resizes to ``floor(H * s) x floor(W * s)``, the size
      ``F.interpolate(scale_factor=s)`` gives in the reference (not mmseg's round-half-up).
      PyTorch then maps coordinates with 1 / s where this uses in / out size; the two agree
      whenever H * s and W * s are integers (e.g. 1024x2048 at 0.5, 0.75, 1.25, 1.5, 1.75).

  Returns:
    f32[N, out_h, out_w, K] logits (NHWC).
  """
  if spec.input_size is not None:
    images = resize_bilinear(images, spec.input_size)
  height, width = images.shape[1:3]
  views = []
  for scale in spec.scales:
    scaled = resize_bilinear(images, (math.floor(height * scale), math.floor(width * scale)))
    views.append(_image_logits(logits_fn, scaled, spec))
    if spec.flip:
      views.append(_image_logits(logits_fn, scaled[:, :, ::-1], spec)[:, :, ::-1])
  return sum(resize_bilinear(view, out_size) for view in views) / len(views)


def predict_labels(logits_fn: LogitsFn, images: jax.Array, out_size: Sequence[int],
                   spec: InferenceSpec = InferenceSpec()) -> jax.Array:
  """The argmax of ``segment_logits`` (same arguments): uint8[N, out_h, out_w] class ids.

  uint8 is this project's label dtype and a quarter of int32's transfer; ties go to the lowest
  class id, as ``torch.argmax`` does.
  """
  logits = segment_logits(logits_fn, images, out_size, spec)
  if logits.shape[-1] > 256:
    raise ValueError(f'{logits.shape[-1]} classes do not fit uint8 labels.')
  return jnp.argmax(logits, axis=-1).astype(jnp.uint8)


def _image_logits(logits_fn, images, spec: InferenceSpec) -> jax.Array:
  """float32 logits of one view: at the model's stride ('whole') or the image's size ('slide')."""
  if spec.mode == 'whole':
    return _float32_logits(logits_fn, images)
  return _slide_logits(logits_fn, images, spec.window, spec.stride)


def _float32_logits(logits_fn, images) -> jax.Array:
  # float32 before any resize: resize_bilinear interpolates in its input's dtype.
  return logits_fn(images).astype(jnp.float32)


def _slide_logits(logits_fn, images, window_size, stride) -> jax.Array:
  """sssegmentation's 'slide' mode: average of window logits, each upsampled to its window.

  The windows all have the same size, so one ``lax.scan`` over their corners runs ``logits_fn``
  once per window with a single compiled body and only one window's activations alive.
  """
  batch, height, width, channels = images.shape
  tops = _window_starts(height, window_size[0], stride[0])
  lefts = _window_starts(width, window_size[1], stride[1])
  window = (min(window_size[0], height), min(window_size[1], width))
  # The windows form a grid, so the number covering pixel (y, x) is a product of per-axis
  # counts: two small constants instead of an image-sized one. A stride no larger than the
  # window (InferenceSpec's rule) covers every pixel.
  rows, cols = _coverage(tops, window[0], height), _coverage(lefts, window[1], width)
  corners = jnp.asarray([(top, left) for top in tops for left in lefts], jnp.int32)
  window_logits = lambda crop: resize_bilinear(_float32_logits(logits_fn, crop), window)
  num_classes = jax.eval_shape(window_logits, images[:, :window[0], :window[1]]).shape[-1]

  def add_window(canvas, corner):
    start = (0, corner[0], corner[1], 0)
    crop = jax.lax.dynamic_slice(images, start, (batch, *window, channels))
    total = jax.lax.dynamic_slice(canvas, start, (batch, *window, num_classes))
    return jax.lax.dynamic_update_slice(canvas, total + window_logits(crop), start), None

  canvas = jnp.zeros((batch, height, width, num_classes), jnp.float32)
  canvas, _ = jax.lax.scan(add_window, canvas, corners)
  coverage = jnp.asarray(rows, jnp.float32)[:, None] * jnp.asarray(cols, jnp.float32)[None, :]
  return canvas / coverage[None, :, :, None]


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Window offsets along one axis, as sssegmentation/mmsegmentation compute them.

  ``max(size - crop + stride - 1, 0) // stride + 1`` windows at ``i * stride``; a window that
  would cross the far edge is shifted back inside (and clipped to the image if it is smaller).
  """
  count = max(size - crop + stride - 1, 0) // stride + 1
  return [max(min(i * stride + crop, size) - crop, 0) for i in range(count)]


def _coverage(starts: Sequence[int], window: int, size: int) -> np.ndarray:
  """How many windows of length ``window`` starting at ``starts`` cover each position."""
  counts = np.zeros(size, np.int64)
  for start in starts:
    counts[start:start + window] += 1
  return counts
