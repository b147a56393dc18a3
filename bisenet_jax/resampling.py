"""PyTorch's bilinear sampling rule, for the models' resizes (JAX, traced with static sizes)
and for the host-side upsampling of an exported file's logits (NumPy: that path must not import
JAX)."""

from __future__ import annotations

import numpy as np


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``F.interpolate(mode='bilinear', align_corners=False)`` along one axis of ``in_size``
  pixels resampled to ``out_size``: for each output pixel its two source pixels ``(low,
  high)`` (int32) and the float32 weight of ``high`` (``low`` weighs one minus it).

  The source coordinate is PyTorch's ``(dst + 0.5) * in / out - 0.5``, clamped at 0, with the
  scale computed in float32 as PyTorch computes it for a float32 tensor.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  source = np.maximum(source, np.float32(0))
  low = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, (source - low).astype(np.float32)


def resize_axis_linear(x, axis: int, out_size: int, xp=np):
  """``x`` resampled along ``axis`` to ``out_size`` with ``linear_taps``, in ``x``'s dtype.

  ``xp`` is the array module: ``jax.numpy`` in the models, NumPy on the host; both compute the
  same products in the same order.
  """
  in_size = x.shape[axis]
  if out_size == in_size:
    return x
  low, high, weight_high = linear_taps(in_size, out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight_low = xp.asarray(1 - weight_high, x.dtype).reshape(shape)
  weight_high = xp.asarray(weight_high, x.dtype).reshape(shape)
  return (xp.take(x, xp.asarray(low), axis=axis) * weight_low +
          xp.take(x, xp.asarray(high), axis=axis) * weight_high)
