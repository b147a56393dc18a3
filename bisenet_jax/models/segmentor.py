"""The FCN segmentor on BiSeNetV1 (main head + two auxiliary heads) and ``build_model``.

Top-level children mirror the reference's state-dict prefixes: ``backbone_net``, ``decoder``
and ``auxiliary_decoder`` (holding heads ``0`` and ``1``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bisenet_jax.models import layers
from bisenet_jax.models.bisenet import BiSeNetV1
from bisenet_jax.specs.model import ARCHS


class FCNHead(layers.ConvNormModule):
  """nn.Sequential(conv3x3 no bias, BN, ReLU, Dropout2d, conv1x1 with bias), keys 0, 1, 4."""
  features: int = 256
  num_classes: int = 19
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = layers.relu(self.conv_bn(x, self.features, 3, names=('0', '1'), train=train))
    x = layers.channel_dropout(self.dropout_rate, name='3')(x, deterministic=not train)
    return self.conv(self.num_classes, 1, in_features=self.features, use_bias=True, name='4')(x)


class AuxiliaryDecoder(layers.ConvNormModule):
  """The reference's ModuleList of aux heads: head ``0`` on c8, head ``1`` on c16."""
  features: int = 64
  num_classes: int = 19
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], train: bool) -> tuple[jax.Array, ...]:
    return tuple(
        FCNHead(features=self.features, num_classes=self.num_classes,
                dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
                name=str(index))(x, train)
        for index, x in enumerate(features))


class FCNBiSeNetV1(layers.ConvNormModule):
  """BiSeNetV1 with an FCN head: NHWC normalised RGB images in, stride-8 logits out.

  ``__call__(images, train=False)`` returns the main logits (N, ceil(H/8), ceil(W/8), K).
  ``train=True`` returns ``(logits, aux8, aux16)``, each at its own stride (8, 8, 16), not
  upsampled: the task code upsamples them to the label size. The aux heads only run in
  training (and at init, so that every parameter exists).
  """
  depth: int = 18
  stem: str = 'deep'
  spatial_channels: Sequence[int] = (64, 64, 64, 128)
  context_channels: Sequence[int] = (128, 256, 512)
  head_channels: int = 256
  aux_channels: int = 64
  num_classes: int = 19
  dropout_rate: float = 0.1

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    c8, c16, fused = BiSeNetV1(depth=self.depth, stem=self.stem,
                               spatial_channels=self.spatial_channels,
                               context_channels=self.context_channels,
                               out_channels=self.head_channels, name='backbone_net',
                               **kw)(images.astype(self.dtype), train)
    logits = FCNHead(features=self.head_channels, num_classes=self.num_classes,
                     dropout_rate=self.dropout_rate, name='decoder', **kw)(fused, train)
    self.sow('intermediates', 'logits', logits)
    if not (train or self.is_initializing()):
      return logits
    aux8, aux16 = AuxiliaryDecoder(features=self.aux_channels, num_classes=self.num_classes,
                                   dropout_rate=self.dropout_rate, name='auxiliary_decoder',
                                   **kw)((c8, c16), train)
    return logits, aux8, aux16


# Module paths of the three classifiers (the heads' last 1x1 convolutions, the only layers whose
# shape depends on the class count): what fine-tuning to other classes re-initialises.
CLASSIFIERS = (('decoder', '4'), ('auxiliary_decoder', '0', '4'), ('auxiliary_decoder', '1', '4'))


def build_model(name: str, num_classes: int = 19, dropout_rate: float = 0.1, *,
                stem: str = 'deep', dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32) -> FCNBiSeNetV1:
  """Builds an official variant by name ('bisenetv1_r18' or 'bisenetv1_r50').

  Args:
    name: architecture name, a key of ``ARCHS``.
    num_classes: classifier width (19 for Cityscapes).
    dropout_rate: Dropout2d rate of the three heads (train mode only).
    stem: 'deep' (v1c, official) or 'classic' (7x7, for torchvision ImageNet weights).
    dtype: compute dtype (e.g. jnp.bfloat16); BatchNorm statistics stay float32.
    param_dtype: parameter dtype.
  """
  if name not in ARCHS:
    raise ValueError(f'Unknown architecture {name!r}; choose one of {sorted(ARCHS)}.')
  spec = ARCHS[name]
  return FCNBiSeNetV1(depth=spec.depth, stem=stem, spatial_channels=spec.spatial_channels,
                      context_channels=spec.context_channels, head_channels=spec.head_channels,
                      aux_channels=spec.aux_channels, num_classes=num_classes,
                      dropout_rate=dropout_rate, dtype=dtype, param_dtype=param_dtype)


def init_variables(model: FCNBiSeNetV1, rng: jax.Array | None = None) -> dict:
  """``{'params', 'batch_stats'}`` of ``model``, initialised with ``rng`` (default key 0).

  Every layer is size-agnostic, so a 64x64 dummy image creates them all (the aux heads too).
  """
  rng = jax.random.key(0) if rng is None else rng
  return model.init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)


def abstract_variables(model: FCNBiSeNetV1) -> dict:
  """The shapes and dtypes of ``init_variables(model)``, without computing them."""
  return jax.eval_shape(lambda: init_variables(model))
