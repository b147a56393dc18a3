"""ResNet 18/34/50/101 as the context backbone: deep (v1c) or classic 7x7 stem, output stride 32.

Submodule names are the PyTorch state-dict names (``stem.0``, ``layer1.0`` > ``conv1``,
``downsample.1``; ``conv1``/``bn1`` for the classic stem), so a parameter path joined with dots
is its PyTorch key.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax

from bisenet_jax.models import kernels, layers

# depth -> (block type, blocks per stage)
STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
}
EXPANSION = {'basic': 1, 'bottleneck': 4}
PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class _Block(layers.ConvNormModule):
  planes: int = 64
  strides: int = 1

  def _shortcut(self, x: jax.Array, out_features: int, train: bool) -> jax.Array:
    """Identity, or the 1x1 strided conv + BN named ``downsample.0`` and ``downsample.1``."""
    if self.strides == 1 and x.shape[-1] == out_features:
      return x
    return self.conv_bn(x, out_features, 1, self.strides,
                        names=('downsample.0', 'downsample.1'), train=train)


class BasicBlock(_Block):
  """Two 3x3 convs (stride on the first) plus the shortcut."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = layers.relu(self.conv_bn(x, self.planes, 3, self.strides, names=('conv1', 'bn1'),
                                 train=train))
    y = self.conv_bn(y, self.planes, 3, names=('conv2', 'bn2'), train=train)
    return layers.relu(y + self._shortcut(x, self.planes, train))


class Bottleneck(_Block):
  """1x1 -> 3x3 (the stride sits here, 'pytorch' style) -> 1x1 to 4x planes, plus the shortcut."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = layers.relu(self.conv_bn(x, self.planes, 1, names=('conv1', 'bn1'), train=train))
    y = layers.relu(self.conv_bn(y, self.planes, 3, self.strides, names=('conv2', 'bn2'),
                                 train=train))
    y = self.conv_bn(y, self.planes * 4, 1, names=('conv3', 'bn3'), train=train)
    return layers.relu(y + self._shortcut(x, self.planes * 4, train))


BLOCKS = {'basic': BasicBlock, 'bottleneck': Bottleneck}


class ResNet(layers.ConvNormModule):
  """ResNet returning the four stage outputs (strides 4, 8, 16, 32), NHWC.

  Attributes:
    depth: 18, 34, 50 or 101.
    stem: 'deep' = the ResNetV1c stem (three 3x3 convs 3->32->32->64), used by the official
      BiSeNetV1 models; 'classic' = torchvision's single 7x7 conv.
  """
  depth: int = 18
  stem: Literal['deep', 'classic'] = 'deep'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
    if self.depth not in STAGES:
      raise ValueError(f'ResNet depth must be one of {sorted(STAGES)}, got {self.depth}.')
    x = self._stem(x, train)
    self.sow('intermediates', 'stem', x)
    x = kernels.max_pool_3x3_s2(x)
    self.sow('intermediates', 'maxpool', x)
    block_name, counts = STAGES[self.depth]
    outputs = []
    for stage, (planes, count, stride) in enumerate(zip(PLANES, counts, STAGE_STRIDES)):
      for index in range(count):
        x = BLOCKS[block_name](planes=planes, strides=stride if index == 0 else 1,
                               dtype=self.dtype, param_dtype=self.param_dtype,
                               name=f'layer{stage + 1}.{index}')(x, train)
      self.sow('intermediates', f'layer{stage + 1}', x)
      outputs.append(x)
    return tuple(outputs)

  def _stem(self, x: jax.Array, train: bool) -> jax.Array:
    if self.stem == 'classic':
      return layers.relu(self.conv_bn(x, 64, 7, 2, names=('conv1', 'bn1'), train=train))
    if self.stem != 'deep':
      raise ValueError(f"ResNet stem must be 'deep' or 'classic', got {self.stem!r}.")
    # nn.Sequential indices of the v1c stem: convs 0/3/6, BNs 1/4/7 (ReLUs 2/5/8).
    for index, (features, stride) in enumerate(((32, 2), (32, 1), (64, 1))):
      names = (f'stem.{3 * index}', f'stem.{3 * index + 1}')
      x = layers.relu(self.conv_bn(x, features, 3, stride, names=names, train=train))
    return x
