"""The reference's train and test transforms (docs/reference.md §5.3, §5.4), on the host: NumPy
and OpenCV.

Every op is a small pure function of a sample dict `{'image': [H, W, 3], 'label': uint8 [H, W]}`
(inputs are never modified; unchanged arrays may be shared). Random ops take a
`np.random.Generator` (grain's random map gives one per record) and draw from it in exactly
the reference's order and with the same distributions: `random_sample()` -> `rng.random()`,
`randint(a, b)` -> `rng.integers(a, b)` (upper bound exclusive in both), `uniform` ->
`rng.uniform`. The draws therefore sit where the reference's do, but a seed does not reproduce
the reference's NumPy global-RNG stream.

Images are RGB throughout, while the reference keeps BGR until Normalize. Where channel order
matters, the HSV conversions of the photometric distortion say below why the result is still
bit-identical. Images stay uint8 here: Normalize, the reference's last step before padding,
runs on the device (`normalization.normalize_on_device`, bit-identical to the reference), so a
batch crosses to the device in a quarter of the bytes.
"""

import cv2
import numba
import numpy as np

from bisenet_jax.data import opencv_resize
from bisenet_jax.data.cityscapes import IGNORE_LABEL


def resize_keep_ratio(sample, resize_to=(1024, 2048), scale=1.0):
  """The reference Resize with keep_ratio=True, at one scale.

  The target is `(int(resize_to[0] * scale), int(resize_to[1] * scale))`. The frame is scaled
  by `sf = min(max(target) / max(h, w), min(target) / min(h, w))` to
  `(int(w * sf + 0.5), int(h * sf + 0.5))`. The image uses cv2.INTER_LINEAR (fixed-point on
  uint8, no antialiasing), the label cv2.INTER_NEAREST (source index floor(dst * in / out)).

  Args:
    sample: dict with 'image' uint8 [H, W, 3] and optionally 'label' uint8 [H, W]; any other
      keys pass through.
    resize_to: (height, width) of the target at scale 1; only its long and short side matter,
      so the reference's (width, height) = (2048, 1024) and (1024, 2048) give the same result.
    scale: factor applied to `resize_to`.

  Returns:
    The sample with 'image' (and 'label', if present) resized. When the size does not change
    the sample is returned as it is (cv2.resize would only copy it).
  """
  return _resize(sample, keep_ratio_size(sample['image'].shape[:2], resize_to, scale))


def _resize(sample, size):
  """The sample's image (and label) resized to (height, width) `size` as `resize_keep_ratio`
  does."""
  if size == sample['image'].shape[:2]:
    return sample
  dsize = (size[1], size[0])
  resized = {**sample, 'image': cv2.resize(sample['image'], dsize, interpolation=cv2.INTER_LINEAR)}
  if 'label' in sample:
    resized['label'] = cv2.resize(sample['label'], dsize, interpolation=cv2.INTER_NEAREST)
  return resized


def keep_ratio_size(size, resize_to, scale):
  """The (height, width) `resize_keep_ratio` gives a frame of (height, width) `size`."""
  height, width = size
  target = (int(resize_to[0] * scale), int(resize_to[1] * scale))
  factor = min(max(target) / max(height, width), min(target) / min(height, width))
  return int(height * factor + 0.5), int(width * factor + 0.5)


def random_resize(sample, rng, resize_to=(1024, 2048), scale_range=(0.5, 2.0)):
  """`resize_keep_ratio` at a scale drawn uniformly from [scale_range[0], scale_range[1])."""
  return resize_keep_ratio(sample, resize_to, _random_scale(rng, scale_range))


def _random_scale(rng, scale_range):
  low, high = scale_range
  return rng.random() * (high - low) + low


def random_crop(sample, rng, crop_size, one_category_max_ratio=0.75, max_tries=10):
  """The reference RandomCrop: retries crops that are dominated by one class.

  Each try crops `min(crop_size, (H, W))` at `top = integers(0, H - h + 1)`, then
  `left = integers(0, W - w + 1)`, and is accepted when its non-ignored pixels hold at least two
  classes and the largest one is below `one_category_max_ratio` of them. When no try is
  accepted the last crop is kept, unless it has no non-ignored pixel at all: then the sample
  comes back uncropped (and `center_pad` later centre-crops it).

  Args:
    sample: dict with 'image' [H, W, 3] and 'label' uint8 [H, W]; other keys pass through.
    rng: the record's generator; draws 2 integers per try.
    crop_size: (height, width) of the crop.
    one_category_max_ratio: the largest share of non-ignored pixels one class may have.
    max_tries: number of crops to try.

  Returns:
    The sample with 'image' and 'label' cropped (views into the inputs).
  """
  def read_label(rows, cols):
    label = sample['label'][rows, cols]
    return label, np.bincount(label.ravel(), minlength=256)

  window, label = _crop_window(read_label, sample['label'].shape, rng, crop_size,
                               one_category_max_ratio, max_tries)
  if window is None:
    return sample
  return {**sample, 'image': sample['image'][window], 'label': label}


def random_resized_crop(sample, rng, *, crop_size, resize_to, scale_range):
  """`random_crop(random_resize(sample, rng, resize_to, scale_range), rng, crop_size)`, bit for
  bit and with the same draws, computing only the pixels the crop keeps.

  The label is resized inside each tried window only, the image inside the accepted one
  (`opencv_resize` reproduces OpenCV's arithmetic there). Where a window cannot be computed
  alone (no crop is kept, or OpenCV's exact 2x downscale) the whole frame is resized, as
  `resize_keep_ratio` does.
  """
  size = keep_ratio_size(sample['label'].shape, resize_to, _random_scale(rng, scale_range))

  def read_label(rows, cols):
    return opencv_resize.nearest(sample['label'], size, rows, cols)

  window, label = _crop_window(read_label, size, rng, crop_size)
  unresized = size == sample['label'].shape
  if window is not None and (unresized or opencv_resize.is_windowable(sample['label'].shape, size)):
    image = (sample['image'][window] if unresized
             else opencv_resize.linear(sample['image'], size, *window))
    return {**sample, 'image': image, 'label': label}
  resized = _resize(sample, size)
  if window is None:
    return resized
  return {**resized, 'image': resized['image'][window], 'label': label}


def _crop_window(read_label, size, rng, crop_size, one_category_max_ratio=0.75, max_tries=10):
  """`random_crop`'s tries on a frame of (height, width) `size` whose label windows
  `read_label(rows, cols)` gives with the count of each value in them (int64 [256]).

  Returns:
    (rows, cols) slices and the label inside them, or (None, None) when the sample stays
    uncropped.
  """
  height, width = size
  crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
  for _ in range(max_tries):
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    label, counts = read_label(*window)
    counts = _class_counts(counts)
    if len(counts) > 1 and counts.max() / counts.sum() < one_category_max_ratio:
      break
  if len(counts) == 0:
    return None, None
  return window, label


def _class_counts(value_counts):
  """The nonzero counts of int64 [256] `value_counts`, leaving out IGNORE_LABEL."""
  counts = value_counts.copy()
  counts[IGNORE_LABEL] = 0
  return counts[counts > 0]


def random_flip(sample, rng, prob=0.5):
  """The reference RandomFlip: flips image and label left-right unless `rng.random() > prob`."""
  if rng.random() > prob:
    return sample
  # cv2.flip copies the same bytes as NumPy's reversed view would, many times faster.
  return {**sample, 'image': cv2.flip(sample['image'], 1), 'label': cv2.flip(sample['label'], 1)}


def photometric_distortion(image, rng, *, brightness_delta=32, contrast_range=(0.5, 1.5),
                           saturation_range=(0.5, 1.5), hue_delta=18):
  """The reference PhotoMetricDistortion, with its draw order and uint8 truncation.

  Order: brightness, mode = integers(2), contrast if mode == 1, saturation, hue, contrast if
  mode == 0. Each step first draws integers(2) and is skipped on 0; every applied step rounds
  its result down to uint8.

  Every step maps each uint8 value (of all channels, or of one HSV channel) to a value that
  depends on it alone, so each step is a 256-entry table, computed with the reference's own
  arithmetic on every uint8 value and applied with cv2.LUT (one HSV channel: `_map_channel`):
  the same bits as computing every pixel, without the float32 temporaries. Steps that follow each other on the same values
  (brightness, contrast) are composed into one table and so cost one pass.

  Args:
    image: uint8 [H, W, 3] RGB.
    rng: the record's generator.
    brightness_delta: brightness offset drawn from U(-delta, delta).
    contrast_range: contrast factor range.
    saturation_range: factor range for the 8-bit HSV saturation.
    hue_delta: hue offset drawn from integers(-delta, delta), i.e. -delta..delta-1, in OpenCV's
      8-bit hue units (0..179).

  Returns:
    uint8 [H, W, 3] RGB; `image` itself when no step is applied.
  """
  # Every parameter is drawn first, in the reference's order; applying the tables draws nothing.
  before_hsv = _brightness_table(rng, brightness_delta)
  contrast_first = rng.integers(2) == 1
  if contrast_first:
    before_hsv = _compose(before_hsv, _contrast_table(rng, contrast_range))
  saturation = _saturation_table(rng, saturation_range)
  hue = _hue_table(rng, hue_delta)
  after_hsv = None if contrast_first else _contrast_table(rng, contrast_range)
  if saturation is None and hue is None:
    before_hsv, after_hsv = _compose(before_hsv, after_hsv), None
  # The first step that runs writes a new array, the later ones overwrite it in place.
  steps = [(_apply, before_hsv), (_apply_in_hsv, saturation), (_apply_in_hsv, hue),
           (_apply, after_hsv)]
  result = None
  for apply, step in steps:
    if step is not None:
      result = apply(image if result is None else result, step, out=result)
  return image if result is None else result


# Every uint8 value once: a step applied to it gives the step's table.
_VALUES = np.arange(256, dtype=np.uint8)


# Each step's draws, in the reference's order, and its table (None: the step is skipped).

def _brightness_table(rng, delta):
  if not rng.integers(2):
    return None
  return _convert(_VALUES, beta=rng.uniform(-delta, delta))


def _contrast_table(rng, contrast_range):
  if not rng.integers(2):
    return None
  return _convert(_VALUES, alpha=rng.uniform(*contrast_range))


def _saturation_table(rng, saturation_range):
  if not rng.integers(2):
    return None
  return _SATURATION, _convert(_VALUES, alpha=rng.uniform(*saturation_range))


def _hue_table(rng, delta):
  if not rng.integers(2):
    return None
  return _HUE, ((_VALUES.astype(int) + rng.integers(-delta, delta)) % 180).astype(np.uint8)


_HUE, _SATURATION = 0, 1  # Channels of OpenCV's HSV.


def _compose(first, second):
  """The table of `first` then `second`, where None is the identity."""
  if first is None:
    return second
  if second is None:
    return first
  return second[first]


def _apply(image, table, out=None):
  """`image` mapped through a uint8 [256] table, into `out` (may be `image`) if given."""
  return cv2.LUT(image, table, dst=out)


def _apply_in_hsv(image, step, out=None):
  """Maps one 8-bit HSV channel of `image` through a table, as the reference's round trip
  through HSV does, into `out` (may be `image`) if given; `step` is (channel, uint8 [256])."""
  hsv = _to_hsv(image, out)
  _map_channel(hsv, *step)
  return _from_hsv(hsv, hsv)


@numba.njit(cache=True, nogil=True)
def _map_channel(image, channel, table):
  """image[..., channel] = table[image[..., channel]], in place (cv2.LUT maps one channel only
  through a 3-channel table, at six times the cost)."""
  pixels = image.reshape(-1, image.shape[-1])
  for i in range(pixels.shape[0]):
    pixels[i, channel] = table[pixels[i, channel]]


def _convert(image, alpha=1.0, beta=0.0):
  """float32(image) * alpha + beta, clipped to [0, 255] and truncated to uint8 (the reference's)."""
  # NumPy multiplies a float32 array by a Python float in float32 (before and after NEP 50);
  # the explicit casts keep that true for NumPy float64 scalars as well.
  out = image.astype(np.float32) * np.float32(alpha) + np.float32(beta)
  return np.clip(out, 0, 255).astype(np.uint8)


# The reference calls COLOR_RGB2HSV / COLOR_HSV2RGB on its BGR array, so OpenCV takes the
# physical blue channel for red. COLOR_BGR2HSV / COLOR_HSV2BGR on our RGB array also take the
# physical blue channel for red (and write it back to the same slot), so the results are
# bit-identical to the reference, including its hue being measured with red and blue swapped.
# Each pixel's conversion reads only that pixel, so `out` may be the input.
def _to_hsv(rgb, out=None):
  return cv2.cvtColor(rgb, cv2.COLOR_BGR2HSV, dst=out)


def _from_hsv(hsv, out=None):
  return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=out)


def center_pad(sample, size):
  """The reference Padding: centres the sample in `size`, and says where its pixels went.

  `top = (H - h) // 2` and `left = (W - w) // 2`, the rest goes to the bottom and right. The
  label is filled with IGNORE_LABEL. The image stays uint8 and is filled with 0; the reference
  pads after Normalize with 0.0 (the mean colour once normalised), which
  `normalization.normalize_on_device` reproduces from the returned 'content' box. A side longer
  than the target is centre-cropped, as the reference's negative padding does. Unlike the
  reference, the target is never transposed to match a portrait sample: a batch needs one
  shape, and for the reference's square crops the transpose does nothing.

  Args:
    sample: dict with 'image' uint8 [h, w, 3] and 'label' uint8 [h, w]; other keys pass through.
    size: (H, W) of the output.

  Returns:
    The sample with 'image' uint8 [H, W, 3], 'label' uint8 [H, W] and 'content' int32 [4]:
    `(top, left, height, width)` of the sample's pixels in the output.
  """
  windows = [_centred_window(length, target)
             for length, target in zip(sample['label'].shape, size)]
  rows, cols = (dst for _, dst in windows)
  content = np.array([rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start],
                     np.int32)
  if sample['label'].shape == tuple(size):  # Nothing to pad or crop: the arrays as they are.
    return {**sample, 'content': content}
  return {**sample,
          'image': _pad_or_crop(sample['image'], size, windows, 0),
          'label': _pad_or_crop(sample['label'], size, windows, IGNORE_LABEL),
          'content': content}


def _pad_or_crop(array, size, windows, fill):
  """Copies `array` [h, w, ...] into a `fill`ed array [size[0], size[1], ...] at `windows`."""
  out = np.full(tuple(size) + array.shape[2:], fill, array.dtype)
  src, dst = zip(*windows)
  out[dst] = array[src]
  return out


def _centred_window(length, target):
  """Source and destination slices that put `length` elements at offset (target - length) // 2.

  A negative offset drops that many elements from the start of the source instead.
  """
  offset = (target - length) // 2
  src_start, dst_start = max(-offset, 0), max(offset, 0)
  count = min(length - src_start, target - dst_start)
  return slice(src_start, src_start + count), slice(dst_start, dst_start + count)


def train_transform(sample, rng, *, crop_size, resize_to, scale_range):
  """The reference training pipeline up to Normalize, which the device does: resize, crop,
  flip, photometric distortion, pad. The resize computes only the crop's pixels
  (`random_resized_crop`), so its cost follows the crop's size, not the frame's.

  Args:
    sample: dict with 'image' uint8 [H, W, 3] RGB and 'label' uint8 [H, W] class ids.
    rng: the record's generator.
    crop_size: (height, width) of the crop and of the output.
    resize_to: (height, width) of the Resize target at scale 1, e.g. (1024, 2048).
    scale_range: (low, high) of the random Resize scale.

  Returns:
    `{'image': uint8 [h, w, 3] RGB, 'label': uint8 [h, w], 'content': int32 [4]}` with
    (h, w) = crop_size; `normalization.normalize_on_device(image, content)` completes it.
  """
  sample = random_resized_crop(sample, rng, crop_size=crop_size, resize_to=resize_to,
                               scale_range=scale_range)
  sample = random_flip(sample, rng)
  image = photometric_distortion(sample['image'], rng)
  return center_pad({'image': image, 'label': sample['label']}, crop_size)


def eval_transform(sample, *, resize_to):
  """The reference test pipeline up to Normalize: resize the image (a no-op for 1024x2048
  frames).

  The label is left at its original size, untouched, as the reference does in TEST mode; the
  prediction is resized to it instead.

  Args:
    sample: dict with 'image' uint8 [H, W, 3] RGB and 'label' uint8 [H, W] class ids.
    resize_to: (height, width) of the Resize target, e.g. (1024, 2048); None keeps the image
      as it is (an exported model resizes it to its own input size itself).

  Returns:
    `{'image': uint8 [h, w, 3] RGB, 'label': uint8 [H, W]}`; normalised on the device.
  """
  image = sample['image']
  if resize_to is not None:
    image = resize_keep_ratio({'image': image}, resize_to)['image']
  return {'image': image, 'label': sample['label']}
