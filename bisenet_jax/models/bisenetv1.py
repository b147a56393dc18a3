"""BiSeNetV1 (Yu et al., ECCV 2018) with its FCN heads, as sssegmentation builds it: spatial path,
context path (a ResNet), feature fusion module (docs/reference.md §1).

Child names are the reference's state-dict names (``spatial_path`` > ``layer1.0``,
``context_path`` > ``arm16`` > ``atten_conv_layer.1``, ``ffm`` > ``conv_atten.0``), and the
quirks of the reference are kept on purpose: no ReLU in the ARM attention, a ReLU *before*
the FFM's sigmoid, FFM output f * (1 + a), concat order [spatial, context].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bisenet_jax.models import heads, layers
from bisenet_jax.models.resnet import ResNet
from bisenet_jax.models.segmentor import Segmentor


class SpatialPath(layers.ConvNormModule):
  """Four Conv-BN-ReLU layers (7x7/s2, 3x3/s2, 3x3/s2, 1x1) down to stride 8."""
  channels: Sequence[int] = (64, 64, 64, 128)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for index, (features, kernel, stride) in enumerate(zip(self.channels, (7, 3, 3, 1),
                                                           (2, 2, 2, 1))):
      names = (f'layer{index + 1}.0', f'layer{index + 1}.1')
      x = layers.relu(self.conv_bn(x, features, kernel, stride, names=names, train=train))
    return x


class AttentionRefinementModule(layers.ConvNormModule):
  """y = ReLU(BN(conv3x3(x))); output y * sigmoid(BN(conv1x1(mean_hw(y))))."""
  features: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = layers.relu(self.conv_bn(x, self.features, 3, names=('conv_layer.0', 'conv_layer.1'),
                                 train=train))
    a = self.conv_bn(layers.global_avg_pool(y), self.features, 1,
                     names=('atten_conv_layer.1', 'atten_conv_layer.2'), train=train)
    return y * jax.nn.sigmoid(a)


class ContextPath(layers.ConvNormModule):
  """ResNet + two ARMs + global context, returning (c8, c16) with ``channels[0]`` features."""
  depth: int = 18
  stem: str = 'deep'
  channels: Sequence[int] = (128, 256, 512)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    width = self.channels[0]
    _, x8, x16, x32 = ResNet(depth=self.depth, stem=self.stem, dtype=self.dtype,
                             param_dtype=self.param_dtype, name='backbone_net')(x, train)
    arm = lambda name: AttentionRefinementModule(features=width, dtype=self.dtype,
                                                 param_dtype=self.param_dtype, name=name)
    head = lambda y, name: layers.relu(self.conv_bn(y, width, 3, names=(f'{name}.0', f'{name}.1'),
                                                    train=train))

    g = layers.relu(self.conv_bn(layers.global_avg_pool(x32), width, 1,
                                 names=('gap_conv.1', 'gap_conv.2'), train=train))
    self.sow('intermediates', 'gap_conv', g)
    s32 = arm('arm32')(x32, train)
    self.sow('intermediates', 'arm32_output', s32)
    c16 = head(layers.resize_nearest(s32 + g, x16.shape[1:3]), 'conv_head32')
    self.sow('intermediates', 'c16', c16)
    s16 = arm('arm16')(x16, train)
    self.sow('intermediates', 'arm16_output', s16)
    c8 = head(layers.resize_nearest(s16 + c16, x8.shape[1:3]), 'conv_head16')
    self.sow('intermediates', 'c8', c8)
    return c8, c16


class FeatureFusionModule(layers.ConvNormModule):
  """f = ReLU(BN(conv1x1([spatial, context]))); a = sigmoid(ReLU(BN(conv1x1(mean_hw(f)))));
  output f * (1 + a)."""
  features: int = 256

  @nn.compact
  def __call__(self, spatial: jax.Array, context: jax.Array, train: bool) -> jax.Array:
    z = jnp.concatenate([spatial, context], axis=-1)
    f = layers.relu(self.conv_bn(z, self.features, 1, names=('conv1.0', 'conv1.1'), train=train))
    a = self.conv_bn(layers.global_avg_pool(f), self.features, 1,
                     names=('conv_atten.0', 'conv_atten.1'), train=train)
    a = jax.nn.sigmoid(layers.relu(a))
    return f * a + f


class BiSeNetV1(layers.ConvNormModule):
  """Returns (c8, c16, ffm_out): the two context features for the aux heads and the fused one."""
  depth: int = 18
  stem: str = 'deep'
  spatial_channels: Sequence[int] = (64, 64, 64, 128)
  context_channels: Sequence[int] = (128, 256, 512)
  out_channels: int = 256

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    c8, c16 = ContextPath(depth=self.depth, stem=self.stem, channels=self.context_channels,
                          name='context_path', **self.dtypes)(x, train)
    spatial = SpatialPath(channels=self.spatial_channels, name='spatial_path',
                          **self.dtypes)(x, train)
    self.sow('intermediates', 'spatial', spatial)
    fused = FeatureFusionModule(features=self.out_channels, name='ffm',
                                **self.dtypes)(spatial, c8, train)
    self.sow('intermediates', 'ffm_output', fused)
    return c8, c16, fused


class FCNBiSeNetV1(Segmentor):
  """FCN + BiSeNetV1: a one-conv FCN head on the FFM output, one-conv auxiliary heads on c8 and
  c16 (docs/reference.md §1.7). The defaults are the ResNet-18 variant's widths (§1.1)."""
  depth: int = 18
  stem: str = 'deep'
  spatial_channels: Sequence[int] = (64, 64, 64, 128)
  context_channels: Sequence[int] = (128, 256, 512)
  head_channels: int = 256
  aux_channels: int = 64

  def backbone(self) -> nn.Module:
    return BiSeNetV1(depth=self.depth, stem=self.stem, spatial_channels=self.spatial_channels,
                     context_channels=self.context_channels, out_channels=self.head_channels,
                     **self.dtypes, name='backbone_net')

  def decoder(self) -> nn.Module:
    return heads.FCNHead(features=self.head_channels, num_convs=1, **self.head_options,
                         name='decoder')

  def auxiliary_decoder(self) -> nn.Module:
    return heads.AuxiliaryDecoder(widths=(self.aux_channels,) * 2, num_convs=1,
                                  **self.head_options, name='auxiliary_decoder')
