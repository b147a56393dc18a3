"""Tests of bisenet_jax.train.losses against torch (docs/reference.md §1.9, §4.4)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from bisenet_jax.train.losses import cross_entropy, segmentation_losses

IGNORE = 255
K = 19


def random_labels(rng, shape, ignore_fraction=0.3):
  labels = rng.integers(0, K, size=shape).astype(np.uint8)
  labels[rng.random(shape) < ignore_fraction] = IGNORE
  return labels


def torch_ce(logits_nhwc, labels):
  """The reference loss: NCHW logits, int64 targets, ignore_index."""
  logits = torch.tensor(np.array(logits_nhwc, np.float32)).permute(0, 3, 1, 2)
  return F.cross_entropy(logits, torch.from_numpy(labels.astype(np.int64)),
                         ignore_index=IGNORE).item()


def test_cross_entropy_matches_torch():
  rng = np.random.default_rng(0)
  logits = (3 * rng.normal(size=(2, 9, 13, K))).astype(np.float32)
  labels = random_labels(rng, (2, 9, 13))
  got = float(jax.jit(cross_entropy)(logits, labels))
  np.testing.assert_allclose(got, torch_ce(logits, labels), rtol=1e-6)


def test_cross_entropy_is_nan_when_everything_is_ignored():
  logits = jnp.zeros((1, 4, 4, K))
  assert math.isnan(float(cross_entropy(logits, jnp.full((1, 4, 4), IGNORE, jnp.uint8))))


def test_cross_entropy_runs_in_float32_for_bfloat16_logits():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(1, 6, 7, K)), jnp.bfloat16)
  labels = random_labels(rng, (1, 6, 7))
  loss = cross_entropy(logits, labels)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(float(loss), torch_ce(logits.astype(jnp.float32), labels), rtol=1e-6)


def test_cross_entropy_gradient_is_zero_on_ignored_pixels():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(1, 5, 5, K)), jnp.float32)
  labels = random_labels(rng, (1, 5, 5), ignore_fraction=0.5)
  grad = jax.grad(cross_entropy)(logits, labels)
  assert np.all(np.asarray(grad)[labels == IGNORE] == 0)
  np.testing.assert_allclose(np.asarray(grad).sum(-1), 0, atol=1e-7)  # softmax - one-hot.


def test_segmentation_losses_match_torch_upsample_and_ce():
  rng = np.random.default_rng(3)
  height, width = 37, 50  # Odd sizes: upsampling factors are not integers.
  outputs = [rng.normal(size=(2, h, w, K)).astype(np.float32)
             for h, w in ((5, 7), (5, 7), (3, 4))]  # strides 8, 8, 16.
  labels = random_labels(rng, (2, height, width))
  heads = ('loss_cls', 'loss_aux1', 'loss_aux2')
  got = jax.jit(segmentation_losses, static_argnums=2)(outputs, labels, heads)

  want = {}
  for name, logits in zip(heads, outputs):
    upsampled = F.interpolate(torch.from_numpy(logits).permute(0, 3, 1, 2), size=(height, width),
                              mode='bilinear', align_corners=False)
    want[name] = F.cross_entropy(upsampled, torch.from_numpy(labels.astype(np.int64)),
                                 ignore_index=IGNORE).item()
  want['loss'] = sum(want.values())
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(float(got[name]), want[name], rtol=1e-5, err_msg=name)
