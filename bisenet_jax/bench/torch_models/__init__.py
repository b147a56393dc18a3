"""PyTorch models of the registry's networks: the PyTorch side of ``bench --compare-torch`` and
the second implementation the tests check the Flax models against (torch is imported only here).

BiSeNetV1 is written from the reference's description (docs/reference.md §1-3); BiSeNetV2 and
Fast-SCNN are transcribed from sssegmentation 1.7.0's source. With the same weights all four
give the package's float64 eval- and train-mode outputs and BatchNorm updates exactly (0.0
difference to the goldens recorded from it, docs/reference.md §15). Each ``state_dict()`` lists
the official keys in the official order.
"""

from __future__ import annotations

import functools
from typing import Callable

from bisenet_jax.errors import UserError
from bisenet_jax.specs import network

# Network name -> the module that defines its PyTorch model, and the builder's leading arguments.
_MODULES = {
    'bisenetv1_r18': ('bisenetv1', ('r18',)),
    'bisenetv1_r50': ('bisenetv1', ('r50',)),
    'bisenetv2': ('bisenetv2', ()),
    'fastscnn': ('fastscnn', ()),
}


def _module(name: str):
  import importlib
  network(name)  # A one-line error for an unknown name.
  if name not in _MODULES:
    raise UserError(f'{name} has no PyTorch model to compare with: drop --compare-torch.')
  return importlib.import_module(f'bisenet_jax.bench.torch_models.{_MODULES[name][0]}')


def reference_builder(name: str) -> Callable:
  """``build(num_classes=19, dropout=0.1)`` of network ``name``'s PyTorch segmentor."""
  return functools.partial(_module(name).build_reference, *_MODULES[name][1])


def feature_names(name: str) -> tuple[str, ...]:
  """The activations its ``forward_features`` returns, in forward order."""
  return _module(name).FEATURE_NAMES
