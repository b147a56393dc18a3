"""The segmentor every network shares, and building one from its ``ModelSpec``.

sssegmentation's segmentors are a backbone (``backbone_net``) returning a tuple of features, a
main head (``decoder``) on the last one and auxiliary heads (``auxiliary_decoder.i``) on the
ones before it (the last ``len(heads)`` of them). ``Segmentor`` is that composition; a network
subclasses it with its three parts (``backbone``, ``decoder``, ``auxiliary_decoder``), and the
registry (``specs.NETWORKS``) names the subclass and its widths.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from bisenet_jax.errors import UserError
from bisenet_jax.models import layers
from bisenet_jax.specs import ModelSpec


class Segmentor(layers.ConvNormModule):
  """Normalised NHWC images in; the main head's logits out (at its stride, not upsampled).

  ``__call__(images, train=False)`` returns the main logits (N, ceil(H/8), ceil(W/8), K).
  ``train=True`` returns ``(logits, aux_1, ..., aux_n)``, each at its own stride: the task
  upsamples them to the label size. The auxiliary heads only run in training (and at init, so
  that every parameter exists). Subclasses define ``backbone()``, ``decoder()`` and
  ``auxiliary_decoder()``, each returning the unbound child module with its reference name.
  """
  num_classes: int = 19
  dropout_rate: float = 0.1

  @property
  def head_options(self) -> dict[str, Any]:
    """What every head takes: classes, dropout rate, precision."""
    return {'num_classes': self.num_classes, 'dropout_rate': self.dropout_rate, **self.dtypes}

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False):
    features = self.backbone()(images.astype(self.dtype), train)
    logits = self.decoder()(features[-1], train)
    self.sow('intermediates', 'logits', logits)
    if not (train or self.is_initializing()):
      return logits
    auxiliary = self.auxiliary_decoder()
    return (logits, *auxiliary(features[:-1][-len(auxiliary.widths):], train))


def build(spec: ModelSpec) -> Segmentor:
  """The Flax module of ``spec``: its network's segmentor class with the registry's widths."""
  if spec.dtype == 'float64' and not jax.config.jax_enable_x64:
    raise UserError('model dtype float64 needs 64-bit JAX: set JAX_ENABLE_X64=1.')
  network = spec.network
  module_name, class_name = network.module.split(':')
  segmentor = getattr(importlib.import_module(module_name), class_name)
  return segmentor(num_classes=spec.num_classes, dropout_rate=spec.dropout_rate,
                   dtype=jnp.dtype(spec.dtype), param_dtype=jnp.dtype(spec.param_dtype),
                   **spec.module_options)


def init_variables(model: Segmentor, rng: jax.Array | None = None) -> dict:
  """``{'params', 'batch_stats'}`` of ``model``, initialised with ``rng`` (default key 0).

  Every layer is size-agnostic, so a 64x64 dummy image creates them all (the aux heads too).
  """
  rng = jax.random.key(0) if rng is None else rng
  return model.init(rng, jnp.zeros((1, 64, 64, 3), jnp.float32), train=False)


def abstract_variables(model: Segmentor) -> dict:
  """The shapes and dtypes of ``init_variables(model)``, without computing them."""
  return jax.eval_shape(lambda: init_variables(model))


@functools.lru_cache(maxsize=None)
def classifier_paths(spec: ModelSpec) -> frozenset[tuple[str, ...]]:
  """Module paths of the layers whose shapes depend on the class count (the heads' classifiers):
  what fine-tuning to other classes re-initialises. Found by comparing the variable shapes of
  ``spec`` with those of the same network for one class more."""
  shapes = [traverse_util.flatten_dict(abstract_variables(build(s))['params'])
            for s in (spec, spec.with_classes(spec.num_classes + 1))]
  return frozenset(path[:-1] for path, value in shapes[0].items()
                   if value.shape != shapes[1][path].shape)
