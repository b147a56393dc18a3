"""Tests of bisenet_jax.eval.inference: whole / slide / flip / multi-scale, as sssegmentation.

The model is a toy: a fixed random conv (3x3, stride 8 or 1) and a 1x1 projection to K classes,
written once with jax.lax and once with torch so the reference procedure (sssegmentation's
``auginference`` + ``inference`` + test.py's resize, docs/reference.md §6) can be replayed in torch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bisenet_jax.errors import UserError
from bisenet_jax.eval.inference import predict_labels, segment_logits
from bisenet_jax.models.layers import resize_bilinear
from bisenet_jax.specs import InferenceSpec

K = 19
HIDDEN = 8


def make_weights(seed=0, symmetric=False):
  rng = np.random.default_rng(seed)
  kernel = rng.normal(size=(3, 3, 3, HIDDEN)).astype(np.float32)  # HWIO
  if symmetric:  # Mirror-symmetric in width, so the conv commutes with a left-right flip.
    kernel = (kernel + kernel[:, ::-1]) / 2
  projection = rng.normal(size=(HIDDEN, K)).astype(np.float32)
  return kernel, projection


def jax_logits_fn(weights, stride=8):
  kernel, projection = weights

  def logits_fn(images):
    features = jax.lax.conv_general_dilated(
        images, jnp.asarray(kernel), (stride, stride), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=jax.lax.Precision.HIGHEST)
    return jnp.tanh(features) @ jnp.asarray(projection)

  return logits_fn


def torch_logits_fn(weights, stride=8):
  kernel = torch.tensor(weights[0]).permute(3, 2, 0, 1)  # HWIO -> OIHW
  projection = torch.tensor(weights[1]).T[:, :, None, None]
  return lambda images: F.conv2d(torch.tanh(F.conv2d(images, kernel, stride=stride, padding=1)),
                                 projection)


def torch_segment(net, images_nhwc, out_size, mode='whole', window=None, stride=None,
                  flip=False, scales=(1.0,), input_size=None):
  """sssegmentation's auginference + inference (use_probs_before_resize=False) + test resize."""

  def infer(images):
    if mode == 'whole':
      return net(images)
    (stride_h, stride_w), (crop_h, crop_w) = stride, window
    batch, _, image_h, image_w = images.shape
    grids_h = max(image_h - crop_h + stride_h - 1, 0) // stride_h + 1
    grids_w = max(image_w - crop_w + stride_w - 1, 0) // stride_w + 1
    logits = images.new_zeros((batch, K, image_h, image_w))
    count = images.new_zeros((batch, 1, image_h, image_w))
    for h_idx in range(grids_h):
      for w_idx in range(grids_w):
        x1, y1 = w_idx * stride_w, h_idx * stride_h
        x2, y2 = min(x1 + crop_w, image_w), min(y1 + crop_h, image_h)
        x1, y1 = max(x2 - crop_w, 0), max(y2 - crop_h, 0)
        crop = images[:, :, y1:y2, x1:x2]
        crop_logits = F.interpolate(net(crop), size=crop.shape[2:], mode='bilinear',
                                    align_corners=False)
        logits += F.pad(crop_logits, (x1, image_w - x2, y1, image_h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return logits / count

  images = torch.tensor(np.asarray(images_nhwc)).permute(0, 3, 1, 2)
  if input_size is not None:
    images = F.interpolate(images, size=input_size, mode='bilinear', align_corners=False)
  views = []
  for scale in scales:
    scaled = F.interpolate(images, scale_factor=scale, mode='bilinear', align_corners=False)
    views.append(infer(scaled))
    if flip:
      views.append(infer(scaled.flip(3)).flip(3))
  views = [F.interpolate(v, size=out_size, mode='bilinear', align_corners=False) for v in views]
  return (sum(views) / len(views)).permute(0, 2, 3, 1).numpy()


def random_images(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def jitted(logits_fn, out_size, **options):
  return jax.jit(functools.partial(segment_logits, logits_fn, out_size=out_size,
                                   spec=InferenceSpec(**options)))


# Image sides times every scale are integers here, where PyTorch's scale_factor resize is exact.
@pytest.mark.parametrize('options', [
    dict(mode='whole'),
    dict(mode='whole', flip=True, scales=(0.75, 1.0, 1.5)),
    dict(mode='slide', window=(32, 40), stride=(16, 24)),
    dict(mode='slide', window=(32, 40), stride=(16, 24), flip=True, scales=(0.5, 1.0, 1.5)),
    dict(mode='whole', input_size=(40, 72)),
], ids=['whole', 'whole-flip-ms', 'slide', 'slide-flip-ms', 'input-size'])
def test_matches_sssegmentation_procedure(options):
  weights = make_weights()
  images = random_images((2, 48, 64, 3))
  out_size = (61, 83)
  got = jitted(jax_logits_fn(weights), out_size, **options)(images)
  want = torch_segment(torch_logits_fn(weights), images, out_size, **options)
  assert got.shape == (2, *out_size, K) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_whole_is_one_resize_of_the_logits():
  logits_fn = jax_logits_fn(make_weights())
  images = random_images((2, 40, 56, 3))
  got = segment_logits(logits_fn, images, (40, 56))
  np.testing.assert_array_equal(got, resize_bilinear(logits_fn(images), (40, 56)))


def test_slide_with_a_crop_covering_the_image_equals_whole():
  logits_fn = jax_logits_fn(make_weights())
  images = random_images((1, 40, 56, 3))
  whole = segment_logits(logits_fn, images, (40, 56))
  for crop in ((40, 56), (64, 64)):  # Exactly the image, and larger (clipped to it).
    slide = segment_logits(logits_fn, images, (40, 56),
                           InferenceSpec(mode='slide', window=crop, stride=(8, 8)))
    np.testing.assert_allclose(slide, whole, rtol=1e-6, atol=1e-6)  # scan vs eager rounding.


def test_slide_with_overlapping_windows_equals_whole_for_a_pointwise_model():
  # A model whose output at a pixel depends only on that pixel gives every window the same
  # value there, so the average over overlapping windows must give back the whole-image logits
  # wherever the windows sit: this checks window placement and the coverage division.
  _, projection = make_weights()
  logits_fn = lambda images: jnp.tanh(images) @ jnp.asarray(projection[:3])
  images = random_images((2, 37, 45, 3))
  whole = segment_logits(logits_fn, images, (37, 45))
  slide = jitted(logits_fn, (37, 45), mode='slide', window=(16, 20), stride=(10, 12))(images)
  np.testing.assert_allclose(slide, whole, rtol=1e-6, atol=1e-7)


def test_flip_on_a_mirror_symmetric_image_and_model_changes_nothing():
  logits_fn = jax_logits_fn(make_weights(symmetric=True), stride=1)
  half = random_images((1, 24, 30, 3))
  images = (half + half[:, :, ::-1]) / 2  # Exactly mirror-symmetric.
  plain = segment_logits(logits_fn, images, (24, 30))
  flipped = segment_logits(logits_fn, images, (24, 30), InferenceSpec(flip=True))
  np.testing.assert_allclose(flipped, plain, rtol=1e-6, atol=1e-6)


def test_repeating_scale_one_equals_whole():
  logits_fn = jax_logits_fn(make_weights())
  images = random_images((1, 40, 48, 3))
  np.testing.assert_array_equal(segment_logits(logits_fn, images, (50, 60),
                                               InferenceSpec(scales=(1.0, 1.0))),
                                segment_logits(logits_fn, images, (50, 60)))


def test_scaled_image_sizes_follow_torch_scale_factor():
  shapes = []
  conv = jax_logits_fn(make_weights())

  def logits_fn(images):
    shapes.append(images.shape[1:3])
    return conv(images)

  images = random_images((1, 37, 53, 3))
  scales = (0.5, 0.75, 1.25, 1.75)
  jax.eval_shape(functools.partial(segment_logits, logits_fn, out_size=(37, 53),
                                   spec=InferenceSpec(scales=scales)),
                 images)  # Tracing is enough to see the shapes.
  torch_images = torch.zeros(1, 3, 37, 53)
  want = [tuple(F.interpolate(torch_images, scale_factor=s, mode='bilinear').shape[2:])
          for s in scales]
  assert shapes == want


def test_odd_sizes_give_the_requested_output_shape():
  logits_fn = jax_logits_fn(make_weights())
  images = random_images((2, 37, 53, 3))
  options = dict(mode='slide', window=(24, 32), stride=(16, 20), flip=True, scales=(0.5, 1.25))
  logits = jitted(logits_fn, (75, 101), **options)(images)
  assert logits.shape == (2, 75, 101, K) and np.isfinite(logits).all()
  labels = jax.jit(functools.partial(predict_labels, logits_fn, out_size=(75, 101),
                                     spec=InferenceSpec(**options)))(images)
  assert labels.shape == (2, 75, 101) and labels.dtype == jnp.uint8
  np.testing.assert_array_equal(labels, np.argmax(logits, axis=-1))


@pytest.mark.parametrize('options, message', [
    (dict(mode='sliding'), "--mode 'sliding' is not one of whole, slide"),
    (dict(mode='slide', window=(16, 16)), '--mode slide needs --window-size and --window-stride'),
    (dict(mode='slide', window=(8, 8), stride=(12, 12)), 'leave pixels uncovered'),
    (dict(stride=(8, 8)), 'only apply to --mode slide'),
    (dict(scales=()), 'must be positive numbers'),
    (dict(scales=(1.0, -0.5)), '--scales 1,-0.5 must be positive numbers'),
])
def test_bad_options_are_user_errors(options, message):
  with pytest.raises(UserError, match=message):
    InferenceSpec(**options)
