"""Which model: an official variant, its class count, stem, dropout and compute precision."""

from __future__ import annotations

import dataclasses
from typing import Any

from bisenet_jax.errors import UserError



@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """Widths of one official variant (docs/reference.md §1.1)."""
  depth: int
  spatial_channels: tuple[int, ...]
  context_channels: tuple[int, ...]
  head_channels: int
  aux_channels: int


ARCHS = {
    'bisenetv1_r18': ArchSpec(18, (64, 64, 64, 128), (128, 256, 512), 256, 64),
    'bisenetv1_r50': ArchSpec(50, (256, 256, 256, 512), (512, 1024, 2048), 1024, 256),
}
STEMS = ('deep', 'classic')
# 'float16' trains with dynamic loss scaling (GPUs without fast bfloat16, e.g. T4, V100).
# 'float64' (parameters and compute) is for exactness checks: runs that differ only in the
# order of float additions then agree to ~1e-12.
DTYPES = ('float32', 'bfloat16', 'float16', 'float64')


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """An FCN-BiSeNetV1 to build.

  Attributes:
    name: 'bisenetv1_r18' or 'bisenetv1_r50'.
    num_classes: the classifiers' width.
    stem: 'deep' (ResNet v1c, the official models) or 'classic' (7x7, torchvision weights).
    dropout_rate: Dropout2d rate of the three heads (training only).
    dtype: compute precision, 'float32', 'bfloat16', 'float16' or 'float64' (BatchNorm
      statistics stay float32, parameters float32 except in 'float64').
  """
  name: str
  num_classes: int
  stem: str = 'deep'
  dropout_rate: float = 0.1
  dtype: str = 'float32'

  def __post_init__(self):
    for key, value, choices in (('name', self.name, tuple(ARCHS)), ('stem', self.stem, STEMS),
                                ('dtype', self.dtype, DTYPES)):
      if value not in choices:
        raise UserError(f'model {key} {value!r} is not one of {", ".join(choices)} '
                        f'(config.model.{key}).')

  def checkpoint_config(self) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: ``{'name', 'num_classes', 'stem'}``."""
    return {'name': self.name, 'num_classes': int(self.num_classes), 'stem': self.stem}

  @classmethod
  def from_checkpoint_config(cls, config: dict, **fields) -> ModelSpec:
    return cls(config['name'], config['num_classes'], config.get('stem', 'deep'), **fields)

  def build(self):
    """The Flax module (``models.build_model``)."""
    import jax
    import jax.numpy as jnp

    from bisenet_jax import models
    if self.dtype == 'float64' and not jax.config.jax_enable_x64:
      raise UserError('model dtype float64 needs 64-bit JAX: set JAX_ENABLE_X64=1.')
    dtype = jnp.dtype(self.dtype)
    return models.build_model(self.name, self.num_classes, self.dropout_rate, stem=self.stem,
                              dtype=dtype,
                              param_dtype=jnp.float64 if self.dtype == 'float64' else jnp.float32)
