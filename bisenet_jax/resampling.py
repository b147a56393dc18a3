"""PyTorch's bilinear sampling rule, for the models' resizes (JAX, traced with static sizes)
and for the host-side upsampling of an exported file's logits (NumPy: that path must not import
JAX)."""

from __future__ import annotations

import numpy as np


def linear_taps(in_size: int, out_size: int, dtype=np.float32
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``F.interpolate(mode='bilinear', align_corners=False)`` along one axis of ``in_size``
  pixels resampled to ``out_size``, for a tensor of ``dtype``: for each output pixel its two
  source pixels ``(low, high)`` (int32) and the weight of ``high`` (``low`` weighs one minus it).

  The source coordinate is PyTorch's ``(dst + 0.5) * in / out - 0.5``, clamped at 0, in the
  precision PyTorch computes it for such a tensor: float64 for float64, float32 for every other
  dtype (float16 and bfloat16 included). A float64 run with float32 weights would differ from
  the reference's float64 by ~1e-7.
  """
  precision = np.float64 if np.dtype(dtype) == np.float64 else np.float32
  scale = precision(in_size) / precision(out_size)
  source = (np.arange(out_size, dtype=precision) + precision(0.5)) * scale - precision(0.5)
  source = np.maximum(source, precision(0))
  low = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, (source - low).astype(precision)


def resize_axis_linear(x, axis: int, out_size: int, xp=np):
  """``x`` resampled along ``axis`` to ``out_size`` with ``linear_taps``, in ``x``'s dtype.

  ``xp`` is the array module: ``jax.numpy`` in the models, NumPy on the host; both compute the
  same products in the same order.
  """
  in_size = x.shape[axis]
  if out_size == in_size:
    return x
  low, high, weight_high = linear_taps(in_size, out_size, x.dtype)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight_low = xp.asarray(1 - weight_high, x.dtype).reshape(shape)
  weight_high = xp.asarray(weight_high, x.dtype).reshape(shape)
  return (xp.take(x, xp.asarray(low), axis=axis) * weight_low +
          xp.take(x, xp.asarray(high), axis=axis) * weight_high)
