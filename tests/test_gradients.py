"""The hand-written backward passes (conv, max-pool, upsampled cross-entropy) equal autodiff's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from bisenet_jax.models import kernels, layers
from bisenet_jax.train import losses

NHWC = ('NHWC', 'HWIO', 'NHWC')


def grads_of(fn, *args):
  return jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a))), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize('chunk_bytes', [None, 170_000], ids=['one-chunk', 'padded-chunks'])
@pytest.mark.parametrize('kernel,stride,cin,cout', [(3, 1, 32, 40), (3, 2, 32, 40), (7, 2, 3, 64),
                                                    (1, 2, 32, 48), (1, 1, 40, 32)])
def test_conv_gradients_equal_autodiff(monkeypatch, chunk_bytes, kernel, stride, cin, cout):
  if chunk_bytes:  # 3x3, stride 1: chunks of 3 of the 19 output rows, the last padded.
    monkeypatch.setattr(kernels, '_IM2COL_CHUNK_BYTES', chunk_bytes)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 19, 23, cin), np.float32))
  k = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout), np.float32) / kernel)
  pad = ((kernel // 2, kernel // 2),) * 2
  ours = grads_of(lambda x, k: kernels.conv2d(x, k, (stride, stride), pad), x, k)
  reference = grads_of(lambda x, k: jax.lax.conv_general_dilated(
      x, k, (stride, stride), pad, dimension_numbers=NHWC), x, k)
  for got, want in zip(ours, reference):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_max_pool_gradient_equals_autodiff():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 17, 22, 8), np.float32))
  x = jnp.maximum(x, 0)  # Ties at zero, as after a ReLU.
  reference = lambda x: nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_array_equal(kernels.max_pool_3x3_s2(x), reference(x))
  got, = grads_of(kernels.max_pool_3x3_s2, x)
  want, = grads_of(reference, x)
  # Per window the gradient goes to one maximum; tied windows may pick another, equal-valued one.
  np.testing.assert_allclose(jnp.sum(got), jnp.sum(want), rtol=1e-5)
  untied = np.asarray(x) > 0
  np.testing.assert_allclose(np.asarray(got)[untied], np.asarray(want)[untied], rtol=1e-5,
                             atol=1e-6)


def test_upsampled_cross_entropy_value_and_gradient_equal_the_composition():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.standard_normal((2, 9, 13, 19), np.float32))
  labels = rng.integers(0, 19, (2, 67, 101)).astype(np.uint8)
  labels[:, :5] = 255
  labels = jnp.asarray(labels)
  plain = lambda z: losses.cross_entropy(layers.resize_bilinear(z, labels.shape[1:]), labels)
  fused = lambda z: losses.upsampled_cross_entropy(z, labels)
  np.testing.assert_allclose(fused(logits), plain(logits), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(fused)(logits), jax.grad(plain)(logits), rtol=1e-4,
                             atol=1e-7)
