"""Tests of bisenet_jax.data.transforms against the reference semantics (docs/reference.md §5.3,
§5.4)."""

import cv2
import numpy as np
import pytest

from bisenet_jax.data import transforms as T
from bisenet_jax.data.normalization import normalize, normalize_on_device


class ScriptedRng:
  """Stands in for np.random.Generator: returns scripted values and records every call."""

  def __init__(self, integers=(), uniform=(), random=()):
    self.values = {'integers': list(integers), 'uniform': list(uniform), 'random': list(random)}
    self.calls = []

  def _next(self, method, *args):
    self.calls.append((method, *args))
    return self.values[method].pop(0)

  def integers(self, *args):
    return self._next('integers', *args)

  def uniform(self, *args):
    return self._next('uniform', *args)

  def random(self):
    return self._next('random')


def frame(height, width, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
          'label': rng.integers(0, 19, (height, width), dtype=np.uint8)}


# --- resize ---------------------------------------------------------------------------------

@pytest.mark.parametrize('scale, size', [(0.7, (716, 1432)), (1.37, (1402, 2804))])
def test_resize_sizes_on_a_full_frame(scale, size):
  sample = {'image': np.zeros((1024, 2048, 3), np.uint8), 'label': np.zeros((1024, 2048), np.uint8)}
  out = T.resize_keep_ratio(sample, (1024, 2048), scale)
  assert out['image'].shape == size + (3,)
  assert out['label'].shape == size


def test_resize_is_a_no_op_at_the_base_size():
  sample = frame(1024, 2048)
  assert T.resize_keep_ratio(sample, (1024, 2048), 1.0) is sample


def test_resize_label_is_nearest_with_floor_index_and_image_is_bilinear():
  # A 40x100 frame fitted into (70, 28): sf = min(70/100, 28/40) = 0.7 -> 70x28.
  image = frame(40, 100)['image']
  row_ids = np.repeat(np.arange(40, dtype=np.uint8)[:, None], 100, axis=1)
  col_ids = np.repeat(np.arange(100, dtype=np.uint8)[None, :], 40, axis=0)
  rows, cols = np.arange(28) * 40 // 28, np.arange(70) * 100 // 70
  for label in (row_ids, col_ids):
    out = T.resize_keep_ratio({'image': image, 'label': label, 'name': 'x'}, (70, 28))
    np.testing.assert_array_equal(out['label'], label[rows][:, cols])
    assert out['name'] == 'x'
  bilinear = cv2.resize(image, (70, 28), interpolation=cv2.INTER_LINEAR)
  np.testing.assert_array_equal(out['image'], bilinear)


def test_resize_without_label_resizes_the_image_only():
  out = T.resize_keep_ratio({'image': frame(20, 40)['image']}, (80, 40))
  assert out.keys() == {'image'} and out['image'].shape == (40, 80, 3)


@pytest.mark.parametrize('scale', [0.03, 0.05, 0.3, 0.7, 1.37, 2.0])
def test_resize_equals_opencv4_on_a_small_frame(opencv4_golden, scale):
  """The reference ran on OpenCV 4: the installed OpenCV must resize to the same bits."""
  sample = {'image': opencv4_golden['resize/small/image'],
            'label': opencv4_golden['resize/small/label']}
  out = T.resize_keep_ratio(sample, resize_to=(37, 53), scale=scale)
  np.testing.assert_array_equal(out['image'], opencv4_golden[f'resize/small/{scale}/image'])
  np.testing.assert_array_equal(out['label'], opencv4_golden[f'resize/small/{scale}/label'])


@pytest.mark.parametrize('scale', [0.7, 1.37])
def test_resize_equals_opencv4_on_a_full_frame(opencv4_golden, sha256, scale):
  full = {'image': np.random.default_rng(1).integers(0, 256, (1024, 2048, 3), np.uint8),
          'label': np.random.default_rng(2).integers(0, 19, (1024, 2048), np.uint8)}
  out = T.resize_keep_ratio(full, scale=scale)
  assert sha256(out['image']) == bytes(opencv4_golden[f'resize/full/{scale}/image_sha256'])
  assert sha256(out['label']) == bytes(opencv4_golden[f'resize/full/{scale}/label_sha256'])


def test_random_resize_draws_the_scale_uniformly():
  sample = frame(64, 128)
  rng = ScriptedRng(random=[0.2])
  out = T.random_resize(sample, rng, (128, 64), (0.5, 2.0))
  expected = T.resize_keep_ratio(sample, (128, 64), 0.2 * 1.5 + 0.5)
  assert rng.calls == [('random',)]
  np.testing.assert_array_equal(out['image'], expected['image'])
  assert out['image'].shape == (51, 102, 3)  # target (102, 51) for s = 0.8


# --- crop -----------------------------------------------------------------------------------

def striped(height=100, width=50):
  """Class 0 on rows 0..89, class 1 on rows 90..99."""
  label = np.zeros((height, width), np.uint8)
  label[90:] = 1
  return {'image': frame(height, width)['image'], 'label': label}


def test_crop_retries_until_no_class_reaches_the_max_ratio():
  sample = striped()
  # tops: 0 (one class), 75 (exactly 0.75: rejected, the rule is "< 0.75"), 80 (accepted).
  rng = ScriptedRng(integers=[0, 0, 75, 0, 80, 0, 5, 0])
  out = T.random_crop(sample, rng, (20, 50))
  assert rng.calls == [('integers', 0, 81), ('integers', 0, 1)] * 3
  np.testing.assert_array_equal(out['label'], sample['label'][80:100])
  np.testing.assert_array_equal(out['image'], sample['image'][80:100])


def test_crop_keeps_the_tenth_crop_and_ignores_the_ignore_label():
  sample = striped()
  sample['label'][:, :20] = 255  # class 0 plus ignore is still one class
  tops = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
  rng = ScriptedRng(integers=[v for top in tops for v in (top, 0)])
  out = T.random_crop(sample, rng, (20, 50))
  assert len(rng.calls) == 20
  np.testing.assert_array_equal(out['label'], sample['label'][9:29])


def test_crop_without_labelled_pixels_returns_the_sample_uncropped():
  sample = {'image': frame(30, 40)['image'], 'label': np.full((30, 40), 255, np.uint8)}
  rng = ScriptedRng(integers=[0] * 20)
  assert T.random_crop(sample, rng, (10, 10)) is sample
  assert len(rng.calls) == 20


def test_crop_is_clamped_to_a_smaller_frame():
  sample = frame(16, 64)
  rng = ScriptedRng(integers=[0, 7])
  out = T.random_crop(sample, rng, (32, 32))
  assert rng.calls == [('integers', 0, 1), ('integers', 0, 33)]
  np.testing.assert_array_equal(out['label'], sample['label'][:, 7:39])


# --- flip -----------------------------------------------------------------------------------

@pytest.mark.parametrize('draw, flipped', [(0.5, True), (0.1, True), (0.51, False)])
def test_flip_unless_draw_exceeds_prob(draw, flipped):
  sample = frame(4, 6)
  out = T.random_flip(sample, ScriptedRng(random=[draw]), prob=0.5)
  expected_image = sample['image'][:, ::-1] if flipped else sample['image']
  expected_label = sample['label'][:, ::-1] if flipped else sample['label']
  np.testing.assert_array_equal(out['image'], expected_image)
  np.testing.assert_array_equal(out['label'], expected_label)


def test_flip_of_a_crop_view_equals_numpys_reversed_view():
  sample = frame(40, 60)
  crop = {'image': sample['image'][3:30, 5:48], 'label': sample['label'][3:30, 5:48]}
  out = T.random_flip(crop, ScriptedRng(random=[0.0]))
  np.testing.assert_array_equal(out['image'], crop['image'][:, ::-1])
  np.testing.assert_array_equal(out['label'], crop['label'][:, ::-1])


# --- photometric distortion -----------------------------------------------------------------

def reference_photometric_distortion(bgr, rng):
  """The reference PhotoMetricDistortion as written: BGR data, RGB<->HSV flags, np.random -> rng."""
  def convert(image, alpha=1, beta=0):
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

  def brightness(image):
    return convert(image, beta=rng.uniform(-32, 32)) if rng.integers(2) else image

  def contrast(image):
    return convert(image, alpha=rng.uniform(0.5, 1.5)) if rng.integers(2) else image

  def saturation(image):
    if not rng.integers(2):
      return image
    image = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    image[..., 1] = convert(image[..., 1], alpha=rng.uniform(0.5, 1.5))
    return cv2.cvtColor(image, cv2.COLOR_HSV2RGB)

  def hue(image):
    if not rng.integers(2):
      return image
    image = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    image[..., 0] = (image[..., 0].astype(int) + rng.integers(-18, 18)) % 180
    return cv2.cvtColor(image, cv2.COLOR_HSV2RGB)

  image = brightness(bgr)
  mode = rng.integers(2)
  if mode == 1:
    image = contrast(image)
  image = saturation(image)
  image = hue(image)
  if mode == 0:
    image = contrast(image)
  return image


def test_photometric_matches_the_reference_on_bgr_data_bit_for_bit():
  rgb = frame(24, 32)['image']
  for seed in range(64):  # enough seeds to take every branch
    out = T.photometric_distortion(rgb, np.random.default_rng(seed))
    bgr = rgb[..., ::-1].copy()
    reference = reference_photometric_distortion(bgr, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, reference[..., ::-1])
  # The flags matter: converting the RGB array with the RGB flags would measure hue differently.
  naive = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
  assert not np.array_equal(naive, cv2.cvtColor(rgb, cv2.COLOR_BGR2HSV))


def every_value_image():
  """Every uint8 value in every channel, and colours of every hue, as a strided crop view."""
  ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
  values = np.stack([ramp, np.roll(ramp, 85, axis=0), np.roll(ramp, 170, axis=0)])
  colours = np.random.default_rng(5).integers(0, 256, (3, 256, 3), np.uint8)
  padded = np.zeros((8, 260, 3), np.uint8)
  padded[1:7, 2:258] = np.concatenate([values.reshape(3, 256, 3), colours])
  return padded[1:7, 2:258]


@pytest.mark.parametrize('switches', range(32))
def test_photometric_tables_equal_the_per_pixel_reference_for_every_branch(switches):
  """Each of the 32 combinations of the five on/off draws (brightness, mode, contrast,
  saturation, hue), at extreme and random parameters: the table formulation gives the bits of
  the reference's per-pixel arithmetic."""
  brightness, mode, contrast, saturation, hue = ((switches >> bit) & 1 for bit in range(5))
  image = every_value_image()
  assert not image.flags['C_CONTIGUOUS']  # as random_crop passes it when nothing flips
  rng = np.random.default_rng(switches)
  for beta, alpha, alpha_s, delta in [(-32.0, 0.5, 0.5, -18), (31.999, 1.4999, 1.4999, 17),
                                      *((rng.uniform(-32, 32), rng.uniform(0.5, 1.5),
                                         rng.uniform(0.5, 1.5), rng.integers(-18, 18))
                                        for _ in range(3))]:
    integers = [brightness, mode] + [contrast] * mode + [saturation, hue] + [delta] * hue
    integers += [contrast] * (1 - mode)
    uniform = [beta] * brightness + [alpha] * contrast * mode + [alpha_s] * saturation
    uniform += [alpha] * contrast * (1 - mode)
    out = T.photometric_distortion(image, ScriptedRng(integers, uniform))
    bgr = image[..., ::-1].copy()
    reference = reference_photometric_distortion(bgr, ScriptedRng(integers, uniform))
    np.testing.assert_array_equal(out, reference[..., ::-1])


def test_hsv_conversions_equal_opencv4(opencv4_golden):
  hsv = T._to_hsv(opencv4_golden['hsv/input'])
  np.testing.assert_array_equal(hsv, opencv4_golden['hsv/to_hsv'])
  np.testing.assert_array_equal(T._from_hsv(hsv), opencv4_golden['hsv/from_hsv'])


def test_photometric_draw_order_with_contrast_last():
  rng = ScriptedRng(integers=[1, 0, 1, 1, 5, 1], uniform=[3.0, 1.2, 0.8])
  T.photometric_distortion(frame(4, 4)['image'], rng)
  assert rng.calls == [
      ('integers', 2), ('uniform', -32, 32),  # a. brightness
      ('integers', 2),  # b. mode 0
      ('integers', 2), ('uniform', 0.5, 1.5),  # d. saturation
      ('integers', 2), ('integers', -18, 18),  # e. hue, upper bound exclusive
      ('integers', 2), ('uniform', 0.5, 1.5),  # f. contrast (mode 0)
  ]


def test_photometric_draw_order_with_contrast_first():
  rng = ScriptedRng(integers=[0, 1, 1, 0, 0], uniform=[0.7])
  image = frame(4, 4)['image']
  out = T.photometric_distortion(image, rng)
  assert rng.calls == [('integers', 2), ('integers', 2), ('integers', 2), ('uniform', 0.5, 1.5),
                       ('integers', 2), ('integers', 2)]
  np.testing.assert_array_equal(out, (image.astype(np.float32) * np.float32(0.7)).astype(np.uint8))


@pytest.mark.parametrize('beta, value, expected', [(0.99, 10, 10), (-0.5, 10, 9), (40.0, 250, 255),
                                                   (-20.0, 5, 0)])
def test_photometric_truncates_and_clips(beta, value, expected):
  image = np.full((2, 2, 3), value, np.uint8)
  out = T.photometric_distortion(image, ScriptedRng(integers=[1, 0, 0, 0, 0], uniform=[beta]))
  assert (out == expected).all()


def test_photometric_returns_the_input_when_nothing_fires():
  image = frame(4, 4)['image']
  assert T.photometric_distortion(image, ScriptedRng(integers=[0, 0, 0, 0, 0])) is image


# --- pad ------------------------------------------------------------------------------------

def test_center_pad_700_gives_162_162_with_fills_and_the_content_box():
  sample = {'image': np.ones((700, 6, 3), np.uint8), 'label': np.zeros((700, 6), np.uint8)}
  out = T.center_pad(sample, (1024, 8))
  assert out['image'].shape == (1024, 8, 3) and out['label'].shape == (1024, 8)
  assert (out['image'][162:862, 1:7] == 1).all() and (out['label'][162:862, 1:7] == 0).all()
  assert out['image'].sum() == 700 * 6 * 3  # everything else is 0
  assert (out['label'][:162] == 255).all() and (out['label'][862:] == 255).all()
  assert (out['label'][:, 0] == 255).all() and (out['label'][:, 7] == 255).all()
  assert out['content'].tolist() == [162, 1, 700, 6] and out['content'].dtype == np.int32


def test_center_pad_odd_remainder_goes_to_the_bottom_and_longer_sides_are_centre_cropped():
  label = np.arange(11 * 9, dtype=np.uint8).reshape(11, 9)
  out = T.center_pad({'image': np.zeros((11, 9, 3), np.uint8), 'label': label}, (14, 5))
  # rows: top = (14 - 11) // 2 = 1, bottom 2; cols: left = (5 - 9) // 2 = -2, i.e. drop 2 and 2.
  np.testing.assert_array_equal(out['label'][1:12], label[:, 2:7])
  assert (out['label'][0] == 255).all() and (out['label'][12:] == 255).all()
  assert out['content'].tolist() == [1, 0, 11, 5]


def test_padding_normalised_on_the_device_is_the_reference_zero():
  """normalize -> pad with 0.0 (the reference's order) == pad uint8 -> normalize_on_device."""
  sample = frame(7, 5)
  out = T.center_pad(sample, (10, 4))
  reference = np.zeros((10, 4, 3), np.float32)
  reference[1:8] = normalize(sample['image'])[:, 1:]  # (4 - 5) // 2 = -1: drop column 0.
  on_device = normalize_on_device(out['image'][None], out['content'][None])[0]
  np.testing.assert_array_equal(np.asarray(on_device), reference)


# --- compositions ---------------------------------------------------------------------------

def test_train_transform_shapes_types_and_determinism():
  sample = frame(128, 256)
  kwargs = dict(crop_size=(96, 80), resize_to=(128, 256), scale_range=(0.5, 2.0))
  out = T.train_transform(sample, np.random.default_rng(1), **kwargs)
  again = T.train_transform(sample, np.random.default_rng(1), **kwargs)
  assert out.keys() == {'image', 'label', 'content'}
  assert out['image'].shape == (96, 80, 3) and out['image'].dtype == np.uint8
  assert out['label'].shape == (96, 80) and out['label'].dtype == np.uint8
  assert set(np.unique(out['label'])) <= set(range(19)) | {255}
  for key in out:
    np.testing.assert_array_equal(out[key], again[key])


def test_train_transform_equals_the_reference_steps_on_the_whole_frame():
  """Same arrays and same draws as resizing the whole frame, then cropping, flipping,
  distorting and padding, through every branch: accepted and rejected tries, frames with no
  labelled pixel (kept uncropped, then centre-cropped), crops larger than the frame (padded),
  unresized frames and OpenCV's exact 2x downscale (whole-frame fallbacks)."""
  rng = np.random.default_rng(0)
  uncropped = 0
  for case in range(400):
    height, width = (int(n) for n in rng.integers(6, 80, 2))
    sample = frame(height, width, seed=case)
    sample['label'] = (sample['label'] % rng.integers(1, 4)).astype(np.uint8)
    if case % 6 == 0:
      sample['label'][:] = T.IGNORE_LABEL
    resize_to = tuple(int(n) for n in rng.integers(6, 100, 2))
    scale_range = (0.5, 2.0)
    if case % 10 == 1:  # Exactly the frame's size.
      resize_to, scale_range = (height, width), (1.0, 1.0)
    elif case % 10 == 2:  # Exactly half of it: OpenCV's INTER_AREA.
      sample = frame(2 * height, 2 * width, seed=case)
      resize_to, scale_range = (height, width), (1.0, 1.0)
    settings = dict(crop_size=tuple(int(n) for n in rng.integers(4, 90, 2)),
                    resize_to=resize_to, scale_range=scale_range)
    want_rng, got_rng = np.random.default_rng(case), np.random.default_rng(case)
    want = T.reference_train_transform(sample, want_rng, **settings)
    got = T.train_transform(sample, got_rng, **settings)
    for key in ('image', 'label', 'content'):
      np.testing.assert_array_equal(got[key], want[key], err_msg=f'case {case}: {key}')
    assert got_rng.random() == want_rng.random(), f'case {case}: different draws'
    uncropped += case % 6 == 0
  assert uncropped > 50


def test_eval_transform_keeps_the_label_at_its_original_size():
  sample = frame(20, 40)
  out = T.eval_transform(sample, resize_to=(40, 80))
  assert out['image'].shape == (40, 80, 3) and out['image'].dtype == np.uint8
  assert out['label'] is sample['label']
  full = frame(1024, 2048)
  assert T.eval_transform(full, resize_to=(1024, 2048))['image'] is full['image']
