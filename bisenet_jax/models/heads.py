"""sssegmentation's heads: the FCN decoder, its depthwise-separable variant and the auxiliary heads.

Children carry the indices of the reference's ``nn.Sequential``s, so ``decoder.4`` is the FCN
head's classifier and ``auxiliary_decoder.1.7`` the second auxiliary head's with two convs. Every
head ends with Dropout2d and a 1x1 classifier with a bias; no other conv has one. Heads return
logits at their input's stride: upsampling belongs to the task (losses, inference).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from bisenet_jax.models import layers


class _Head(layers.ConvNormModule):
  """What every head ends with: Dropout2d, then the 1x1 classifier with a bias."""
  num_classes: int = 19
  dropout_rate: float = 0.1

  def classify(self, x: jax.Array, index: int, train: bool) -> jax.Array:
    """Dropout2d as child ``index``, the classifier as child ``index + 1``."""
    x = layers.channel_dropout(self.dropout_rate, name=str(index))(x, deterministic=not train)
    return self.conv(self.num_classes, 1, in_features=x.shape[-1], use_bias=True,
                     name=str(index + 1))(x)


class FCNHead(_Head):
  """``num_convs`` x (conv3x3 no bias, BN, ReLU), Dropout2d, conv1x1 with bias.

  sssegmentation's ``FCN`` decoder and its ``DefaultAuxiliaryDecoder``: conv i is child ``3i``
  and its BN ``3i + 1``, the dropout ``3n`` and the classifier ``3n + 1``.
  """
  features: int = 256
  num_convs: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for index in range(self.num_convs):
      x = self.conv_bn_relu(x, self.features, 3, names=(f'{3 * index}', f'{3 * index + 1}'),
                            train=train)
    return self.classify(x, 3 * self.num_convs, train)


class DepthwiseSeparableFCNHead(_Head):
  """``num_convs`` depthwise-separable 3x3 convs (BN and ReLU after each half), Dropout2d,
  conv1x1 with bias: sssegmentation's ``DepthwiseSeparableFCN`` decoder, children ``0`` ..
  ``n - 1``, the dropout ``n`` and the classifier ``n + 1``."""
  features: int = 128
  num_convs: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for index in range(self.num_convs):
      x = layers.DepthwiseSeparableConv(features=self.features, **self.dtypes,
                                        name=str(index))(x, train)
    return self.classify(x, self.num_convs, train)


class AuxiliaryDecoder(layers.ConvNormModule):
  """The reference's ``ModuleList`` of auxiliary ``FCNHead``s: head ``i`` (feature width
  ``widths[i]``) on input ``i``."""
  widths: Sequence[int] = (64, 64)
  num_convs: int = 1
  num_classes: int = 19
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool) -> tuple[jax.Array, ...]:
    if len(features) != len(self.widths):
      raise ValueError(f'{len(self.widths)} auxiliary heads, {len(features)} inputs')
    return tuple(
        FCNHead(features=width, num_convs=self.num_convs, num_classes=self.num_classes,
                dropout_rate=self.dropout_rate, **self.dtypes, name=str(index))(x, train)
        for index, (width, x) in enumerate(zip(self.widths, features)))
