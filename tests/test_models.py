"""Model structure and the PyTorch-exact layers, each against torch on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bisenet_jax import models
from bisenet_jax.models import kernels, layers
from bisenet_jax.specs import NETWORKS, ModelSpec


def nchw(x):
  return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def nhwc(t):
  return t.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('name,total,inference', [('bisenetv1_r18', 13_444_953, 13_294_771),
                                                  ('bisenetv1_r50', 59_262_617, 56_892_531),
                                                  ('bisenetv2', 14_803_999, 3_358_627),
                                                  ('fastscnn', 1_456_617, 1_399_939)])
def test_parameter_counts_equal_the_reference(name, total, inference):
  variables = models.abstract_variables(models.build(ModelSpec(name, 19)))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
  assert count(variables['params']) == total
  params = dict(variables['params'])
  params.pop('auxiliary_decoder')
  assert count(params) == inference


# Each head's output stride: the main head first, then the auxiliary heads (docs/reference.md
# §1.7, §10, §11).
HEAD_STRIDES = {'bisenetv1_r18': (8, 8, 16), 'bisenetv2': (8, 4, 8, 16, 32),
                'fastscnn': (8, 8, 32)}


@pytest.mark.parametrize('name', sorted(HEAD_STRIDES))
@pytest.mark.parametrize('size', [(64, 64), (97, 130)])
def test_output_shapes_and_train_outputs(name, size):
  """Shapes only (``jax.eval_shape``: traced, not computed)."""
  model = models.build(ModelSpec(name, 7))
  images = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  variables = models.abstract_variables(model)
  ceil = lambda n, stride: -(-n // stride)  # noqa: E731  (every halving rounds up)
  logits = jax.eval_shape(model.apply, variables, images)
  assert logits.shape == (2, ceil(size[0], 8), ceil(size[1], 8), 7)
  outputs, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(1)},
                               mutable=['batch_stats']), variables, images)
  assert [o.shape for o in outputs] == [(2, ceil(size[0], s), ceil(size[1], s), 7)
                                        for s in HEAD_STRIDES[name]]
  assert len(outputs) == len(NETWORKS[name].heads)
  assert set(updates) == {'batch_stats'}


def test_classifiers_are_the_layers_that_depend_on_the_class_count():
  paths = {name: sorted('.'.join(p) for p in models.classifier_paths(ModelSpec(name, 19)))
           for name in NETWORKS}
  assert paths['bisenetv1_r18'] == ['auxiliary_decoder.0.4', 'auxiliary_decoder.1.4', 'decoder.4']
  assert paths['bisenetv2'] == [*(f'auxiliary_decoder.{i}.7' for i in range(4)), 'decoder.4']
  assert paths['fastscnn'] == ['auxiliary_decoder.0.4', 'auxiliary_decoder.1.4', 'decoder.3']


def test_bfloat16_compute_keeps_float32_params_and_statistics():
  model = models.build(ModelSpec('bisenetv1_r18', 19, dtype='bfloat16'))
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = models.abstract_variables(model)
  assert {x.dtype for x in jax.tree_util.tree_leaves(variables)} == {jnp.dtype('float32')}
  assert jax.eval_shape(model.apply, variables, images).dtype == jnp.bfloat16


def test_train_batch_of_one_is_a_clear_error():
  model = models.build(ModelSpec('bisenetv1_r18', 19))
  variables = models.abstract_variables(model)
  with pytest.raises(ValueError, match='batch size of at least 2'):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)},
                                            mutable=['batch_stats']),
                   variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))


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


@pytest.mark.parametrize('channels,multiplier,stride,size', [
    (4, 1, 1, (9, 14)), (4, 1, 2, (11, 14)), (3, 6, 1, (8, 9)), (3, 6, 2, (7, 10))])
def test_depthwise_conv_matches_torch_forward_and_gradients(channels, multiplier, stride, size):
  """Depthwise convs (``groups == channels``, BiSeNetV2's x6 expansion included) as window taps
  on CPU: the same values and gradients as PyTorch's grouped Conv2d."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, *size, channels), dtype=np.float32)
  conv = layers.conv(channels * multiplier, 3, stride, in_features=channels, groups=channels,
                     name='c')
  params = conv.init(jax.random.key(0), x)
  grad_out = rng.standard_normal(conv.apply(params, x).shape, dtype=np.float32)
  loss = lambda p, x: jnp.sum(conv.apply(p, x) * grad_out)  # noqa: E731
  got, (grad_params, grad_x) = conv.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x)
  x_torch = nchw(x).requires_grad_(True)
  kernel = torch.from_numpy(np.array(params['params']['kernel']).transpose(3, 2, 0, 1).copy())
  kernel.requires_grad_(True)
  expected = F.conv2d(x_torch, kernel, stride=stride, padding=1, groups=channels)
  (expected * nchw(grad_out)).sum().backward()
  np.testing.assert_allclose(got, nhwc(expected.detach()), atol=1e-5)
  np.testing.assert_allclose(grad_x, nhwc(x_torch.grad), atol=1e-5)
  np.testing.assert_allclose(grad_params['params']['kernel'],
                             kernel.grad.numpy().transpose(2, 3, 1, 0), atol=1e-4)


@pytest.mark.parametrize('size', [(7, 9), (8, 10), (1, 3)])
def test_average_pool_counts_the_padding_as_torch(size):
  x = np.random.default_rng(4).standard_normal((2, *size, 3), dtype=np.float32)
  expected = F.avg_pool2d(nchw(x), 3, 2, 1)  # count_include_pad=True, ceil_mode=False.
  np.testing.assert_allclose(kernels.avg_pool_3x3_s2(jnp.asarray(x)), nhwc(expected), atol=1e-6)


@pytest.mark.parametrize('in_size,bins', [((13, 26), 6), ((4, 7), 3), ((2, 2), 6), ((5, 5), 1),
                                          ((16, 32), 2)])
def test_adaptive_average_pool_bins_match_torch(in_size, bins):
  """PyTorch's bins overlap when the side is not a multiple of the bin count, and repeat
  inputs when it is smaller (Fast-SCNN's pyramid at small or odd sizes)."""
  x = np.random.default_rng(5).standard_normal((2, *in_size, 3), dtype=np.float32)
  expected = F.adaptive_avg_pool2d(nchw(x), bins)
  np.testing.assert_allclose(layers.adaptive_avg_pool(jnp.asarray(x), bins), nhwc(expected),
                             atol=1e-6)


def test_portable_convolutions_are_plain_xla_convolutions():
  """Inside ``kernels.portable()`` (exports) a depthwise conv is one grouped convolution, not
  taps behind ``platform_dependent`` (which has no ONNX form)."""
  conv = layers.conv(8, 3, 1, in_features=4, groups=4, name='c')
  x = jnp.ones((1, 6, 6, 4))
  params = conv.init(jax.random.key(0), x)
  with kernels.portable():
    jaxpr = str(jax.make_jaxpr(conv.apply)(params, x))
  assert 'conv_general_dilated' in jaxpr and 'feature_group_count=4' in jaxpr
  assert 'platform_index' not in jaxpr
  assert 'platform_index' in str(jax.make_jaxpr(conv.apply)(params, x))
