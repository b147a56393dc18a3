"""PyTorch's bilinear sampling rule in NumPy, for the models' resizes (traced with static sizes)
and for the host-side upsampling of an exported file's logits (which must not import JAX)."""

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
