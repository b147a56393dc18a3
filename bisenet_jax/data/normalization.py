"""The reference's input normalisation, bit for bit, on the host (NumPy) or the device (JAX).

The reference's Normalize (docs/reference.md §5.3) casts the uint8 image to float32, subtracts the
mean with `cv2.subtract` (in float32, the mean rounded to float32) and multiplies by 1 / std
with `cv2.multiply` (in float64, rounded to float32), as OpenCV 4 does for a [1, 3] float64
argument. OpenCV 5 no longer reads that argument as a per-channel scalar for every image shape,
so the project does not call OpenCV for it. Because the input is uint8, the result can only be
one of 256 values per channel: `normalization_table` computes those once, with NumPy, in the
reference's exact arithmetic, and normalising is a lookup. Host and device therefore give the
same bits, for every image shape and every OpenCV version, and a batch can travel to the
device as uint8 (a quarter of the bytes of float32) to be normalised there.
"""

from __future__ import annotations

import functools

import numpy as np

# ImageNet statistics in RGB order, on the 0..255 scale (the reference's Normalize).
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


@functools.lru_cache(maxsize=None)
def _table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  values = np.arange(256, dtype=np.float32)[:, None]
  centred = values - np.asarray(mean, np.float32)  # float32, as cv2.subtract on float32 data.
  table = (centred.astype(np.float64) * (1 / np.asarray(std, np.float64))).astype(np.float32)
  table.flags.writeable = False
  return table


def normalization_table(mean=MEAN_RGB, std=STD_RGB) -> np.ndarray:
  """float32 [256, 3]: entry [v, c] is channel c's normalised value of the uint8 value v."""
  return _table(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def normalize(image: np.ndarray, mean=MEAN_RGB, std=STD_RGB) -> np.ndarray:
  """(image - mean) / std per channel, exactly as the reference computes it, on the host.

  Args:
    image: uint8 [..., 3] RGB.
    mean: per-channel mean, RGB order.
    std: per-channel standard deviation, RGB order.

  Returns:
    float32 [..., 3] RGB.
  """
  if image.dtype != np.uint8 or image.shape[-1:] != (3,):
    raise ValueError(f'normalize expects uint8 [..., 3] RGB, got {image.dtype} {image.shape}')
  return normalization_table(mean, std)[image, np.arange(3)]


def normalize_on_device(images, content=None, mean=MEAN_RGB, std=STD_RGB):
  """`normalize` in JAX (inside a jitted step), plus the reference's zero padding.

  Args:
    images: uint8 [N, H, W, 3] RGB.
    content: optional int32 [N, 4] `(top, left, height, width)` of each image's real pixels;
      everything outside is padding and becomes 0.0 (the mean colour once normalised), as the
      reference's Padding after Normalize. None: every pixel is real.
    mean: per-channel mean, RGB order.
    std: per-channel standard deviation, RGB order.

  Returns:
    float32 [N, H, W, 3] RGB, bit-identical to `normalize` on the real pixels.
  """
  import jax.numpy as jnp  # Here, not above: `normalize` also serves JAX-free ONNX prediction.

  table = jnp.asarray(normalization_table(mean, std))
  normalised = table[images.astype(jnp.int32), jnp.arange(3)]
  if content is None:
    return normalised
  top, left, height, width = (content[:, i, None] for i in range(4))
  rows = jnp.arange(images.shape[1])[None]
  cols = jnp.arange(images.shape[2])[None]
  inside_rows = (rows >= top) & (rows < top + height)  # [N, H]
  inside_cols = (cols >= left) & (cols < left + width)  # [N, W]
  inside = inside_rows[:, :, None, None] & inside_cols[:, None, :, None]
  return jnp.where(inside, normalised, jnp.zeros((), normalised.dtype))
