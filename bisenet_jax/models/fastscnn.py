"""Fast-SCNN (Poudel et al., BMVC 2019) with its depthwise-separable FCN head, as sssegmentation
1.7.0 builds it.

Learning to downsample (a conv and two depthwise-separable convs to stride 8), a global feature
extractor (inverted-residual bottlenecks to stride 32 and a pyramid pooling module) and a
feature fusion module that adds the two at stride 8 (docs/reference.md §11). Child names are the
reference's state-dict names (``learning_to_downsample`` > ``dsconv1`` > ``depthwise_bn``,
``global_feature_extractor`` > ``bottleneck2.0`` > ``conv.1.conv``, ``ppm.3.1``). The pyramid
pools with PyTorch's adaptive bins (overlapping when the map's side is not a multiple of the
bin count), and the fusion upsamples the low-resolution features before its depthwise conv.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bisenet_jax.models import heads, layers
from bisenet_jax.models.segmentor import Segmentor


class LearningToDownsample(layers.ConvNormModule):
  """3x3/s2 Conv-BN-ReLU, then two stride-2 depthwise-separable convs (BN + ReLU in each half)."""
  channels: Sequence[int] = (32, 48)
  features: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = self.conv_bn_relu(x, self.channels[0], 3, 2, names=('conv.0', 'conv.1'), train=train)
    for name, features in (('dsconv1', self.channels[1]), ('dsconv2', self.features)):
      x = layers.DepthwiseSeparableConv(features=features, strides=2, **self.dtypes,
                                        name=name)(x, train)
    return x


class InvertedResidual(layers.ConvNormModule):
  """MobileNetV2's block: 1x1 expansion (BN, ReLU), depthwise 3x3 (BN, ReLU; the stride),
  1x1 projection (BN), plus the input when the shape allows (stride 1, same width)."""
  features: int = 64
  strides: int = 1
  expansion: int = 6

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    hidden = int(round(x.shape[-1] * self.expansion))
    y = x
    if self.expansion != 1:
      y = self.conv_bn_relu(y, hidden, 1, names=('conv.0.conv', 'conv.0.bn'), train=train)
    y = self.conv_bn_relu(y, hidden, 3, self.strides, groups=hidden,
                          names=('conv.1.conv', 'conv.1.bn'), train=train)
    y = self.conv_bn(y, self.features, 1, names=('conv.2.conv', 'conv.2.bn'), train=train)
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class GlobalFeatureExtractor(layers.ConvNormModule):
  """Three stages of inverted residuals, the pyramid pooling module and a 3x3 Conv-BN-ReLU.

  PPM: for each bin count s, AdaptiveAvgPool(s), 1x1 Conv-BN-ReLU to a quarter of the width,
  bilinear upsampling back; concatenated after the input, in ``pool_scales`` order.
  """
  channels: Sequence[int] = (64, 96, 128)
  blocks: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (2, 2, 1)
  expansion: int = 6
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  features: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for stage, (features, count, stride) in enumerate(
        zip(self.channels, self.blocks, self.strides), start=1):
      for index in range(count):
        x = InvertedResidual(features=features, strides=stride if index == 0 else 1,
                             expansion=self.expansion, **self.dtypes,
                             name=f'bottleneck{stage}.{index}')(x, train)
      self.sow('intermediates', f'bottleneck{stage}', x)
    pooled = [x]
    for index, scale in enumerate(self.pool_scales):
      y = self.conv_bn_relu(layers.adaptive_avg_pool(x, scale), x.shape[-1] // 4, 1,
                            names=(f'ppm.{index}.1', f'ppm.{index}.2'), train=train)
      pooled.append(layers.resize_bilinear(y, x.shape[1:3]))
    x = jnp.concatenate(pooled, axis=-1)
    self.sow('intermediates', 'ppm', x)
    return self.conv_bn_relu(x, self.features, 3, names=('out.0', 'out.1'), train=train)


class FeatureFusionModule(layers.ConvNormModule):
  """ReLU(BN(conv1x1(higher)) + BN(conv1x1(ReLU(BN(dwconv3x3(up(lower))))))), at higher's size."""
  features: int = 128

  @nn.compact
  def __call__(self, higher: jax.Array, lower: jax.Array, train: bool) -> jax.Array:
    lower = layers.resize_bilinear(lower, higher.shape[1:3])
    # Conv2d(lower channels, features, groups=features): depthwise when the widths are equal.
    lower = self.conv_bn_relu(lower, self.features, 3, groups=self.features,
                              names=('dwconv.0', 'dwconv.1'), train=train)
    lower = self.conv_bn(lower, self.features, 1, names=('conv_lower_res.0', 'conv_lower_res.1'),
                         train=train)
    higher = self.conv_bn(higher, self.features, 1,
                          names=('conv_higher_res.0', 'conv_higher_res.1'), train=train)
    return layers.relu(higher + lower)


class FastSCNN(layers.ConvNormModule):
  """Returns the higher-resolution features (stride 8), the global ones (stride 32) and their
  fusion (stride 8)."""
  downsample_channels: Sequence[int] = (32, 48)
  global_in_channels: int = 64
  global_channels: Sequence[int] = (64, 96, 128)
  global_strides: Sequence[int] = (2, 2, 1)
  global_out_channels: int = 128
  fusion_channels: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    higher = LearningToDownsample(channels=self.downsample_channels,
                                  features=self.global_in_channels, **self.dtypes,
                                  name='learning_to_downsample')(x, train)
    self.sow('intermediates', 'higher_res', higher)
    lower = GlobalFeatureExtractor(channels=self.global_channels, strides=self.global_strides,
                                   features=self.global_out_channels, **self.dtypes,
                                   name='global_feature_extractor')(higher, train)
    self.sow('intermediates', 'lower_res', lower)
    fused = FeatureFusionModule(features=self.fusion_channels, **self.dtypes,
                                name='feature_fusion')(higher, lower, train)
    self.sow('intermediates', 'fusion', fused)
    return higher, lower, fused


class DepthwiseSeparableFCNFastSCNN(Segmentor):
  """DepthwiseSeparableFCN + Fast-SCNN: two depthwise-separable convs (128) on the fusion, and
  one-conv auxiliary heads (32) on the higher-resolution and the global features."""
  head_channels: int = 128
  aux_channels: Sequence[int] = (32, 32)

  def backbone(self) -> nn.Module:
    return FastSCNN(**self.dtypes, name='backbone_net')

  def decoder(self) -> nn.Module:
    return heads.DepthwiseSeparableFCNHead(features=self.head_channels, num_convs=2,
                                           **self.head_options, name='decoder')

  def auxiliary_decoder(self) -> nn.Module:
    return heads.AuxiliaryDecoder(widths=self.aux_channels, num_convs=1, **self.head_options,
                                  name='auxiliary_decoder')
