"""The reference's train and test transforms (docs/reference.md §5.3, §5.4), on the host: NumPy
and OpenCV.

Every op is a small pure function of a sample dict `{'image': [H, W, 3], 'label': uint8 [H, W]}`
(inputs are never modified; unchanged arrays may be shared). Random ops take a
`np.random.Generator` (grain's random map gives one per record) and draw from it in exactly
the reference's order and with the same distributions: `random_sample()` -> `rng.random()`,
`randint(a, b)` -> `rng.integers(a, b)` (upper bound exclusive in both), `uniform` ->
`rng.uniform`. The draws therefore sit where the reference's do, but a seed does not reproduce
the reference's NumPy global-RNG stream.

`train_transform` runs the training steps as one window read (only the crop's pixels are
computed, docs/reference.md §5.3); `reference_train_transform` composes the steps one by one on
the whole frame, as the reference does, and is what the tests hold it to, bit for bit.

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
  def read_counts(rows, cols):
    return np.bincount(sample['label'][rows, cols].ravel(), minlength=256)

  window = _crop_window(read_counts, sample['label'].shape, rng, crop_size,
                        one_category_max_ratio, max_tries)
  return _crop(sample, window)


def _crop(sample, window):
  """The sample inside `window` ((rows, cols) slices; None: all of it)."""
  if window is None:
    return sample
  return {**sample, 'image': sample['image'][window], 'label': sample['label'][window]}


def _crop_window(read_counts, size, rng, crop_size, one_category_max_ratio=0.75, max_tries=10):
  """`random_crop`'s tries on a frame of (height, width) `size`; `read_counts(rows, cols)` gives
  the count of each label value inside a window (int64 [256]).

  Returns:
    The kept window as (rows, cols) slices, or None when the sample stays uncropped.
  """
  height, width = size
  crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
  for _ in range(max_tries):
    top = rng.integers(0, height - crop_h + 1)
    left = rng.integers(0, width - crop_w + 1)
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    counts = _class_counts(read_counts(*window))
    if len(counts) > 1 and counts.max() / counts.sum() < one_category_max_ratio:
      break
  return window if len(counts) else None


def _class_counts(value_counts):
  """The nonzero counts of int64 [256] `value_counts`, leaving out IGNORE_LABEL."""
  counts = value_counts.copy()
  counts[IGNORE_LABEL] = 0
  return counts[counts > 0]


def random_flip(sample, rng, prob=0.5):
  """The reference RandomFlip: flips image and label left-right unless `rng.random() > prob`."""
  return _flipped(sample) if _flip_draw(rng, prob) else sample


def _flip_draw(rng, prob=0.5):
  return not rng.random() > prob


def _flipped(sample):
  # cv2.flip copies the same bytes as NumPy's reversed view would, many times faster.
  return {**sample, 'image': cv2.flip(sample['image'], 1), 'label': cv2.flip(sample['label'], 1)}


def photometric_distortion(image, rng, **settings):
  """The reference PhotoMetricDistortion, with its draw order and uint8 truncation.

  Order: brightness, mode = integers(2), contrast if mode == 1, saturation, hue, contrast if
  mode == 0. Each step first draws integers(2) and is skipped on 0; every applied step rounds
  its result down to uint8.

  Args:
    image: uint8 [H, W, 3] RGB.
    rng: the record's generator.
    **settings: `photometric_steps`'s ranges.

  Returns:
    uint8 [H, W, 3] RGB; `image` itself when no step is applied.
  """
  return apply_photometric(image, photometric_steps(rng, **settings))


def photometric_steps(rng, *, brightness_delta=32, contrast_range=(0.5, 1.5),
                      saturation_range=(0.5, 1.5), hue_delta=18):
  """The photometric distortion's draws, in the reference's order, as the steps that apply them.

  Every step maps each uint8 value (of all channels, or of one HSV channel) to a value that
  depends on it alone, so each step is a 256-entry table, computed with the reference's own
  arithmetic on every uint8 value and applied with cv2.LUT (one HSV channel: `_map_channel`):
  the same bits as computing every pixel, without the float32 temporaries. Steps that follow
  each other on the same values (brightness, contrast) are composed into one table and so cost
  one pass.

  Args:
    rng: the record's generator.
    brightness_delta: brightness offset drawn from U(-delta, delta).
    contrast_range: contrast factor range.
    saturation_range: factor range for the 8-bit HSV saturation.
    hue_delta: hue offset drawn from integers(-delta, delta), i.e. -delta..delta-1, in OpenCV's
      8-bit hue units (0..179).

  Returns:
    The steps that run, in order, for `apply_photometric`.
  """
  before_hsv = _brightness_table(rng, brightness_delta)
  contrast_first = rng.integers(2) == 1
  if contrast_first:
    before_hsv = _compose(before_hsv, _contrast_table(rng, contrast_range))
  saturation = _saturation_table(rng, saturation_range)
  hue = _hue_table(rng, hue_delta)
  after_hsv = None if contrast_first else _contrast_table(rng, contrast_range)
  if saturation is None and hue is None:
    before_hsv, after_hsv = _compose(before_hsv, after_hsv), None
  steps = [(_apply, before_hsv), (_apply_in_hsv, saturation), (_apply_in_hsv, hue),
           (_apply, after_hsv)]
  return [(apply, table) for apply, table in steps if table is not None]


def apply_photometric(image, steps, *, in_place=False):
  """`image` [H, W, 3] (a view is fine) through `photometric_steps`'s steps: into a new array, or
  into `image` itself if `in_place`. Returns `image` itself when there is no step."""
  result = image if in_place else None
  for apply, table in steps:  # Each step after the first writes in place.
    result = apply(image if result is None else result, table, out=result)
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
  for i in range(image.shape[0]):
    row = image[i]
    for j in range(row.shape[0]):
      row[j, channel] = table[row[j, channel]]


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
  flip, photometric distortion, pad.

  The result and the draws are `reference_train_transform`'s, bit for bit, but only the crop's
  pixels are computed (docs/reference.md §5.3): the crop's tries count the label resized inside
  each tried window, then the image and label are resized inside the kept window only, written
  flipped and padded straight into the output, and distorted there in place. Its cost so
  follows the crop's size, not the frame's. Where a window cannot be computed alone (no crop is
  kept, or OpenCV's exact 2x downscale) the whole frame is resized as the reference does.

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
  frame = sample['label'].shape
  size = keep_ratio_size(frame, resize_to, _random_scale(rng, scale_range))
  # Every try's window has the crop's size, so each try writes its label where center_pad
  # puts the crop: the kept try's label is then in place.
  window_size = (min(crop_size[0], size[0]), min(crop_size[1], size[1]))
  (_, out_rows), (_, out_cols) = (_centred_window(length, target)
                                  for length, target in zip(window_size, crop_size))
  at = (out_rows.start, out_cols.start)
  filled = window_size == tuple(crop_size)
  label = np.empty(crop_size, np.uint8) if filled else np.full(crop_size, IGNORE_LABEL, np.uint8)
  window = _crop_window(
      lambda rows, cols: opencv_resize.nearest_into(sample['label'], size, rows, cols, label, at),
      size, rng, crop_size)
  flip = _flip_draw(rng)
  steps = photometric_steps(rng)
  if window is None or not opencv_resize.is_windowable(frame, size):
    cropped = _crop(_resize(sample, size), window)
    cropped = _flipped(cropped) if flip else cropped
    return center_pad({'image': apply_photometric(cropped['image'], steps),
                       'label': cropped['label']}, crop_size)
  if flip:
    cv2.flip(label[out_rows, out_cols], 1, dst=label[out_rows, out_cols])
  image = np.empty((*crop_size, 3), np.uint8) if filled else np.zeros((*crop_size, 3), np.uint8)
  opencv_resize.linear_into(sample['image'], size, *window, image, at, flip)
  apply_photometric(image[out_rows, out_cols], steps, in_place=True)
  return {'image': image, 'label': label,
          'content': np.array([*at, out_rows.stop - at[0], out_cols.stop - at[1]], np.int32)}


def reference_train_transform(sample, rng, *, crop_size, resize_to, scale_range):
  """`train_transform` step by step as the reference runs it, on the whole resized frame: its
  specification, and what the tests compare it with."""
  sample = random_resize(sample, rng, resize_to, scale_range)
  sample = random_crop(sample, rng, crop_size)
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
