"""Model structure and the PyTorch-exact layers, each against torch on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bisenet_jax import models
from bisenet_jax.models import kernels, layers


def nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def nhwc(t):
  return t.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('name,total,inference', [('bisenetv1_r18', 13_444_953, 13_294_771),
                                                  ('bisenetv1_r50', 59_262_617, 56_892_531)])
def test_parameter_counts_equal_the_reference(name, total, inference):
  variables = models.abstract_variables(models.build_model(name))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
  assert count(variables['params']) == total
  params = dict(variables['params'])
  params.pop('auxiliary_decoder')
  assert count(params) == inference


@pytest.mark.parametrize('size', [(64, 64), (97, 130)])
def test_output_shapes_and_train_outputs(size):
  model = models.build_model('bisenetv1_r18', num_classes=7)
  images = jnp.zeros((2, *size, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  h8, w8 = -(-size[0] // 8), -(-size[1] // 8)
  assert model.apply(variables, images).shape == (2, h8, w8, 7)
  (logits, aux8, aux16), updates = model.apply(variables, images, train=True,
                                               rngs={'dropout': jax.random.key(1)},
                                               mutable=['batch_stats'])
  assert logits.shape == aux8.shape == (2, h8, w8, 7)
  assert aux16.shape == (2, -(-h8 // 2), -(-w8 // 2), 7)
  assert set(updates) == {'batch_stats'}


def test_bfloat16_compute_keeps_float32_params_and_statistics():
  model = models.build_model('bisenetv1_r18', dtype=jnp.bfloat16)
  images = jnp.ones((2, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype('float32')}
  assert model.apply(variables, images).dtype == jnp.bfloat16


def test_train_batch_of_one_is_a_clear_error():
  model = models.build_model('bisenetv1_r18')
  variables = models.init_variables(model)
  with pytest.raises(ValueError, match='batch size of at least 2'):
    model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=True,
                rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])


@pytest.mark.parametrize('in_size,out_size', [((32, 64), (63, 127)), ((8, 8), (16, 16)),
                                              ((5, 7), (3, 4)), ((13, 9), (64, 41))])
def test_resizes_match_torch(in_size, out_size):
  x = np.random.default_rng(0).standard_normal((2, *in_size, 3), dtype=np.float32)
  nearest = F.interpolate(nchw(x), size=out_size, mode='nearest')
  np.testing.assert_array_equal(layers.resize_nearest(jnp.asarray(x), out_size), nhwc(nearest))
  bilinear = F.interpolate(nchw(x), size=out_size, mode='bilinear', align_corners=False)
  # torch's CPU kernel normalises its weights differently, a few float32 ulps apart.
  np.testing.assert_allclose(layers.resize_bilinear(jnp.asarray(x), out_size), nhwc(bilinear),
                             atol=1e-5)


def test_max_pool_and_strided_conv_padding_match_torch():
  x = np.random.default_rng(1).standard_normal((1, 11, 14, 4), dtype=np.float32)
  expected = F.max_pool2d(nchw(x), 3, 2, 1)
  np.testing.assert_array_equal(kernels.max_pool_3x3_s2(jnp.asarray(x)), nhwc(expected))
  conv = layers.conv(5, 7, 2, in_features=4, name='c')
  params = conv.init(jax.random.key(0), x)
  kernel = np.array(params['params']['kernel']).transpose(3, 2, 0, 1).copy()
  with jax.default_matmul_precision('highest'):
    got = conv.apply(params, x)
  np.testing.assert_allclose(got, nhwc(F.conv2d(nchw(x), torch.from_numpy(kernel), stride=2,
                                                padding=3)), atol=1e-5)


def test_batchnorm_train_step_matches_torch_including_unbiased_running_variance():
  x = np.random.default_rng(2).standard_normal((4, 1, 1, 6), dtype=np.float32) * 3 + 1
  bn = layers.BatchNorm()
  variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=True, mutable=['batch_stats'])
  ref = torch.nn.BatchNorm2d(6).train()
  expected = ref(nchw(x))
  np.testing.assert_allclose(y, nhwc(expected.detach()), atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'], ref.running_var.numpy(), rtol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['mean'], ref.running_mean.numpy(), atol=1e-6)


def test_channel_dropout_drops_whole_channels():
  drop = layers.channel_dropout(0.5, name='d')
  x = jnp.ones((4, 8, 8, 32))
  y = np.asarray(drop.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(0)}))
  per_channel = y.reshape(4, 64, 32)
  assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1))  # Constant over H, W.
  assert set(np.unique(y)) == {0.0, 2.0}
