"""What the golden recordings feed the networks, drawn with NumPy alone.

The recording script (run under sssegmentation's own environment, without JAX) and the tests
(under JAX, without sssegmentation) import this module, so both sides start from the same
numbers: a state dict in the official layout, uint8 images with the extent of their real pixels,
labels, and the reference's normalisation of them. It also holds the digest that records a
training step's change of a tensor in a few numbers.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

NUM_CLASSES = 19
IGNORE = 255
DATA = Path(__file__).resolve().parents[1] / 'data'
KEY_LISTS = {
    'bisenetv1_r18': 'ssseg_fcn_bisenetv1_r18_state_dict.txt',
    'bisenetv1_r50': 'ssseg_fcn_bisenetv1_r50_state_dict.txt',
    'bisenetv2': 'ssseg_fcn_bisenetv2_state_dict.txt',
    'fastscnn': 'ssseg_depthwiseseparablefcn_fastscnn_state_dict.txt',
}
# The odd size of the eval- and train-mode forwards (ceil-mode halvings, adaptive pooling bins
# and resize coordinates all show), and the crop of the training step.
FORWARD_SIZE = (97, 203)
STEP_CROP = (64, 64)
# Replicas x images per replica of the training step: the reference's 8 GPUs x 2 (batch 16;
# Fast-SCNN trains with batch 32, 8 x 4; docs/reference.md §4.1, §11.3).
STEP_REPLICAS = 8
STEP_IMAGES_PER_REPLICA = {'bisenetv1_r18': 2, 'bisenetv1_r50': 2, 'bisenetv2': 2, 'fastscnn': 4}

# Convolution weights ~ N(0, (WEIGHT_GAIN / sqrt(fan_in))^2), about 0.78x Kaiming's std: with
# running statistics that do not match the batch's, residual adds make the activations' scale
# sensitive to the gain, and this one keeps every network's activations O(1) in eval mode.
WEIGHT_GAIN = 1.1

# The reference's Normalize (docs/reference.md §5.3), RGB order, 0..255 scale.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)

# A tensor's change is digested by chunks of DIGEST_CHUNK consecutive elements (C order of the
# state-dict layout), each projected on a fixed random +-1 vector; tensors of at most
# DIGEST_WHOLE elements are kept whole.
DIGEST_CHUNK = 1024
DIGEST_WHOLE = 256


def read_key_list(path) -> list[tuple[str, tuple[int, ...]]]:
  """``[(key, shape), ...]`` of an official key-list file (header ``<n> params <count>``, then
  ``key (d0, d1, ...)`` lines), checked against its header."""
  header, *lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
  count, _, parameters = header.split()
  entries = []
  for line in lines:
    key, shape = line.split(' ', 1)
    entries.append((key, tuple(int(d) for d in shape.strip('()').replace(' ', '').split(',')
                               if d)))
  total = sum(int(np.prod(shape)) for key, shape in entries
              if not key.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  if len(entries) != int(count) or total != int(parameters):
    raise ValueError(f'{path}: the header says {header!r}, the lines {len(entries)} keys and '
                     f'{total} parameters')
  return entries


def state_dict(name: str, seed: int = 0) -> dict[str, np.ndarray]:
  """A random state dict of network ``name`` with exactly its official keys and shapes.

  Convolution weights N(0, WEIGHT_GAIN^2 / fan_in); biases U(-0.2, 0.2); BatchNorm scales
  U(0.5, 1.5), running means U(-0.2, 0.2), running variances U(0.5, 2) (positive);
  num_batches_tracked an int64 count. Floats are float64 values that float32 represents exactly,
  so a float32 copy anywhere on the way loses nothing.
  """
  rng = np.random.default_rng(seed)
  entries = read_key_list(DATA / KEY_LISTS[name])
  result = {}
  for key, shape in entries:
    if key.endswith('num_batches_tracked'):
      result[key] = np.asarray(rng.integers(1, 1000), np.int64)
      continue
    if key.endswith('running_var'):
      value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith('running_mean') or key.endswith('bias'):
      value = rng.uniform(-0.2, 0.2, shape)
    elif len(shape) == 1:  # A BatchNorm's weight.
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(0.0, WEIGHT_GAIN / np.sqrt(np.prod(shape[1:])), shape)
    result[key] = value.astype(np.float32).astype(np.float64)
  return result


def normalization_table() -> np.ndarray:
  """float32 [256, 3]: the reference's Normalize of each uint8 value per RGB channel, in its
  arithmetic (OpenCV 4: float32 subtraction of the float32-rounded mean, then a float64
  multiplication by 1 / std rounded to float32)."""
  values = np.arange(256, dtype=np.float32)[:, None]
  centred = values - np.asarray(MEAN_RGB, np.float32)
  return (centred.astype(np.float64) * (1 / np.asarray(STD_RGB, np.float64))).astype(np.float32)


def batch(count: int, size: tuple[int, int], seed: int, padded: bool) -> dict[str, np.ndarray]:
  """``{'image': u8[N,H,W,3] RGB, 'label': u8[N,H,W], 'content': i32[N,4]}`` as the training
  pipeline gives them; ``content`` is each image's ``(top, left, height, width)`` of real pixels.

  Labels are uniform classes with 15 % of the real pixels ignored (255). With ``padded``, every
  other image's real content is smaller than the crop in height, width or both, centred as the
  reference's Padding places it (top = (H - h) // 2, docs/reference.md §5.3); the padding is
  255 in the label and arbitrary in the uint8 image (normalisation sets it to 0.0).
  """
  rng = np.random.default_rng(seed)
  height, width = size
  images = rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (count, height, width)).astype(np.uint8)
  labels[rng.random((count, height, width)) < 0.15] = IGNORE
  content = np.tile(np.array([0, 0, height, width], np.int32), (count, 1))
  if padded:
    for i in range(1, count, 2):
      h = height - int(rng.integers(1, height // 3)) * (i % 4 != 3)
      w = width - int(rng.integers(1, width // 3)) * (i % 6 != 5)
      content[i] = ((height - h) // 2, (width - w) // 2, h, w)
  outside = ~inside(content, size)
  labels[outside] = IGNORE
  return {'image': images, 'label': labels, 'content': content}


def inside(content: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """bool [N, H, W]: which pixels lie inside each image's ``content`` box."""
  top, left, height, width = (content[:, i, None] for i in range(4))
  rows = np.arange(size[0])[None]
  cols = np.arange(size[1])[None]
  inside_rows = (rows >= top) & (rows < top + height)
  inside_cols = (cols >= left) & (cols < left + width)
  return inside_rows[:, :, None] & inside_cols[:, None, :]


def normalized(batch: dict[str, np.ndarray]) -> np.ndarray:
  """float64 [N, H, W, 3]: the images as the reference's pipeline leaves them (Normalize, then
  Padding with 0.0 outside the content)."""
  images = normalization_table()[batch['image'], np.arange(3)].astype(np.float64)
  return np.where(inside(batch['content'], images.shape[1:3])[..., None], images, 0.0)


def forward_batch() -> dict[str, np.ndarray]:
  """The two images (no padding) of the eval- and train-mode forwards."""
  return batch(2, FORWARD_SIZE, seed=1, padded=False)


def step_batch(name: str) -> dict[str, np.ndarray]:
  """The global batch of the training step: STEP_REPLICAS groups of consecutive images."""
  return batch(STEP_REPLICAS * STEP_IMAGES_PER_REPLICA[name], STEP_CROP, seed=2, padded=True)


def digest(key: str, change: np.ndarray) -> np.ndarray:
  """float64: the whole ``change`` when it has at most DIGEST_WHOLE elements, else for each chunk
  of DIGEST_CHUNK consecutive elements (the last one zero-padded) its dot product with a random
  +-1 vector drawn from the key's CRC-32.

  A relative error e in one element c_i moves its chunk's projection by e * |c_i|, whereas
  rounding errors of relative size r in every element move it by about r * ||chunk||_2.
  """
  flat = np.asarray(change, np.float64).ravel()
  if flat.size <= DIGEST_WHOLE:
    return flat
  return chunks(flat) @ signs(key)


def digest_scales(change: np.ndarray) -> np.ndarray:
  """The L2 norm of what each number of ``digest(key, change)`` sums: the scale its rounding
  errors are relative to (the tensor's norm for every element of a tensor kept whole)."""
  flat = np.asarray(change, np.float64).ravel()
  if flat.size <= DIGEST_WHOLE:
    return np.full(flat.size, np.linalg.norm(flat))
  return np.linalg.norm(chunks(flat), axis=1)


def chunks(flat: np.ndarray) -> np.ndarray:
  """[chunks, DIGEST_CHUNK]: ``flat`` zero-padded to a whole number of chunks."""
  padded = np.zeros(-(-flat.size // DIGEST_CHUNK) * DIGEST_CHUNK, flat.dtype)
  padded[:flat.size] = flat
  return padded.reshape(-1, DIGEST_CHUNK)


def signs(key: str) -> np.ndarray:
  return np.random.default_rng(zlib.crc32(key.encode())).choice([-1.0, 1.0], DIGEST_CHUNK)
