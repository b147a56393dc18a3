"""BiSeNetV2 (Yu et al., IJCV 2021) with its FCN heads, as sssegmentation 1.7.0 builds it.

A detail branch (wide, shallow, stride 8), a semantic branch (a stem, gather-and-expand layers,
a context embedding block; stride 32) and the bilateral guided aggregation (BGA) that fuses
them at stride 8 (docs/reference.md §10). Child names are the reference's state-dict names
(``detail`` > ``detail_branch.1.3``, ``semantic`` > ``stage2.0`` > ``dwconv.2``, ``bga`` >
``detail_down.0``), and its quirks are kept: a stride-2 GE layer has no ReLU between its two
depthwise convs; the GE shortcut and the BGA's depthwise-separable convs have no ReLU (the BGA's
pointwise halves no BN either); ``detail_down`` ends with an average pool that counts the zero
padding; the CE block normalises the pooled 1x1 map before its conv.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bisenet_jax.models import heads, kernels, layers
from bisenet_jax.models.segmentor import Segmentor


class DetailBranch(layers.ConvNormModule):
  """Three stages of 3x3 Conv-BN-ReLUs (2, 3, 3 of them), each starting with stride 2."""
  channels: Sequence[int] = (64, 64, 128)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for stage, features in enumerate(self.channels):
      for index in range(2 if stage == 0 else 3):
        x = self.conv_bn_relu(x, features, 3, 2 if index == 0 else 1, train=train, names=(
            f'detail_branch.{stage}.{3 * index}', f'detail_branch.{stage}.{3 * index + 1}'))
    return x


class StemBlock(layers.ConvNormModule):
  """Stride 4: a 3x3/s2 Conv-BN-ReLU, then [1x1 -> 3x3/s2 convs, 3x3/s2 max-pool] fused by a 3x3."""
  features: int = 16

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.conv_bn_relu(x, self.features, 3, 2, names=('conv_first.0', 'conv_first.1'),
                          train=train)
    left = self.conv_bn_relu(x, self.features // 2, 1, names=('convs.0', 'convs.1'), train=train)
    left = self.conv_bn_relu(left, self.features, 3, 2, names=('convs.3', 'convs.4'),
                             train=train)
    right = kernels.max_pool_3x3_s2(x)
    return self.conv_bn_relu(jnp.concatenate([left, right], axis=-1), self.features, 3,
                             names=('fuse_last.0', 'fuse_last.1'), train=train)


class GatherExpandLayer(layers.ConvNormModule):
  """3x3 Conv-BN-ReLU, depthwise expansion by ``expansion``, 1x1 projection, residual, ReLU.

  Stride 1: one depthwise 3x3 conv to ``expansion`` x the channels (BN, ReLU) and the identity
  shortcut. Stride 2: a strided depthwise expansion (BN, no ReLU), a second depthwise conv (BN,
  ReLU), and a depthwise-separable shortcut with BNs and no ReLU.
  """
  features: int = 32
  expansion: int = 6
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    channels = x.shape[-1]
    mid = channels * self.expansion
    y = self.conv_bn_relu(x, channels, 3, names=('conv1.0', 'conv1.1'), train=train)
    if self.strides == 1:
      y = self.conv_bn_relu(y, mid, 3, groups=channels, names=('dwconv.0', 'dwconv.1'),
                            train=train)
      shortcut = x
    else:
      y = self.conv_bn(y, mid, 3, self.strides, groups=channels,
                       names=('dwconv.0', 'dwconv.1'), train=train)
      y = self.conv_bn_relu(y, mid, 3, groups=mid, names=('dwconv.2', 'dwconv.3'), train=train)
      shortcut = layers.DepthwiseSeparableConv(
          features=self.features, strides=self.strides, depthwise_relu=False,
          pointwise_relu=False, **self.dtypes, name='shortcut.0')(x, train)
    y = self.conv_bn(y, self.features, 1, names=('conv2.0', 'conv2.1'), train=train)
    return layers.relu(y + shortcut)


class ContextEmbeddingBlock(layers.ConvNormModule):
  """x + ReLU(BN(conv1x1(BN(mean_hw(x))))), then a 3x3 Conv-BN-ReLU."""
  features: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    context = self.norm('gap.1')(layers.global_avg_pool(x), train)
    context = self.conv_bn_relu(context, self.features, 1, names=('conv_gap.0', 'conv_gap.1'),
                                train=train)
    return self.conv_bn_relu(x + context, self.features, 3, names=('conv_last.0', 'conv_last.1'),
                             train=train)


class SemanticBranch(layers.ConvNormModule):
  """Stem (stride 4), GE stages to strides 8, 16, 32 (2, 2, 4 layers), the CE block.

  Returns the four stage outputs and the CE block's.
  """
  channels: Sequence[int] = (16, 32, 64, 128)
  expansion: int = 6

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    outputs = [StemBlock(features=self.channels[0], **self.dtypes, name='stage1')(x, train)]
    for stage, features in enumerate(self.channels[1:], start=2):
      count = 4 if stage == len(self.channels) else 2
      x = outputs[-1]
      for index in range(count):
        x = GatherExpandLayer(features=features, expansion=self.expansion,
                              strides=2 if index == 0 else 1, **self.dtypes,
                              name=f'stage{stage}.{index}')(x, train)
      outputs.append(x)
    last = len(self.channels)
    outputs.append(ContextEmbeddingBlock(features=self.channels[-1], **self.dtypes,
                                         name=f'stage{last}_CEBlock')(x, train))
    for name, value in zip([f'stage{i}_output' for i in range(1, last + 1)] + ['ce'], outputs):
      self.sow('intermediates', name, value)
    return tuple(outputs)


class BilateralGuidedAggregation(layers.ConvNormModule):
  """Each branch gated by the other's sigmoid, at both resolutions, summed at the detail's.

  detail' = dwsep(detail) * sigmoid(up(BN(conv3x3(semantic)))); semantic' = avgpool(BN(conv3x3
  /s2(detail))) * sigmoid(dwsep(semantic)), upsampled; output Conv-BN-ReLU(detail' + semantic').
  """
  features: int = 128

  @nn.compact
  def __call__(self, detail: jax.Array, semantic: jax.Array, train: bool) -> jax.Array:
    separable = lambda name: layers.DepthwiseSeparableConv(  # noqa: E731
        features=self.features, depthwise_relu=False, pointwise_norm=False,
        pointwise_relu=False, **self.dtypes, name=name)
    detail_dwconv = separable('detail_dwconv.0')(detail, train)
    detail_down = self.conv_bn(detail, self.features, 3, 2,
                               names=('detail_down.0', 'detail_down.1'), train=train)
    detail_down = kernels.avg_pool_3x3_s2(detail_down)
    semantic_conv = self.conv_bn(semantic, self.features, 3,
                                 names=('semantic_conv.0', 'semantic_conv.1'), train=train)
    semantic_dwconv = separable('semantic_dwconv.0')(semantic, train)
    semantic_conv = layers.resize_bilinear(semantic_conv, detail_dwconv.shape[1:3])
    fuse_detail = detail_dwconv * jax.nn.sigmoid(semantic_conv)
    fuse_semantic = layers.resize_bilinear(detail_down * jax.nn.sigmoid(semantic_dwconv),
                                           fuse_detail.shape[1:3])
    return self.conv_bn_relu(fuse_detail + fuse_semantic, self.features, 3,
                             names=('conv.0', 'conv.1'), train=train)


class BiSeNetV2(layers.ConvNormModule):
  """Returns the semantic stages 1-4 (strides 4, 8, 16, 32) and the BGA output (stride 8)."""
  detail_channels: Sequence[int] = (64, 64, 128)
  semantic_channels: Sequence[int] = (16, 32, 64, 128)
  expansion: int = 6
  bga_channels: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    detail = DetailBranch(channels=self.detail_channels, **self.dtypes, name='detail')(x, train)
    self.sow('intermediates', 'detail_output', detail)
    *stages, context = SemanticBranch(channels=self.semantic_channels, expansion=self.expansion,
                                      **self.dtypes, name='semantic')(x, train)
    fused = BilateralGuidedAggregation(features=self.bga_channels, **self.dtypes,
                                       name='bga')(detail, context, train)
    self.sow('intermediates', 'bga_output', fused)
    return (*stages, fused)


class FCNBiSeNetV2(Segmentor):
  """FCN + BiSeNetV2: a one-conv FCN head (1024 features) on the BGA output and four two-conv
  auxiliary heads on the semantic stages (widths 16, 64, 256, 1024)."""
  head_channels: int = 1024
  aux_channels: Sequence[int] = (16, 64, 256, 1024)

  def backbone(self) -> nn.Module:
    return BiSeNetV2(**self.dtypes, name='backbone_net')

  def decoder(self) -> nn.Module:
    return heads.FCNHead(features=self.head_channels, num_convs=1, **self.head_options,
                         name='decoder')

  def auxiliary_decoder(self) -> nn.Module:
    return heads.AuxiliaryDecoder(widths=self.aux_channels, num_convs=2, **self.head_options,
                                  name='auxiliary_decoder')
