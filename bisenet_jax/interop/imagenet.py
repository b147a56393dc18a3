"""ImageNet ResNet weights -> the context-path backbone, for training from a pretrained start.

Accepts OpenMMLab ResNetV1c files (the reference's choice: deep ``stem.*`` keys) and torchvision
ResNet files (7x7 ``conv1``/``bn1``), bare or under ``state_dict``/``model``, with or without a
``backbone.`` prefix. Classifier keys (``fc.*``, ``head.*``) are ignored. Unlike the reference's
silent ``strict=False`` load, every backbone tensor must be matched, and the match count is
reported (R18: 110 tensors, R50: 275, running statistics included).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from bisenet_jax.errors import UserError
from bisenet_jax.interop import layout, torch_files
from bisenet_jax.specs import ModelSpec

IGNORED_PREFIXES = ('fc.', 'head.')


@dataclasses.dataclass(frozen=True)
class ImportReport:
  matched: int
  ignored: tuple[str, ...]

  def __str__(self):
    ignored = f" (ignored: {', '.join(self.ignored)})" if self.ignored else ''
    return f'loaded {self.matched} ImageNet backbone tensors{ignored}'


def backbone_path(model: ModelSpec) -> tuple[str, ...]:
  """Where the network's ResNet sits in its variable tree; a one-line error if it has none."""
  path = model.network.imagenet_backbone
  if path is None:
    raise UserError(f'{model.name} has no ImageNet backbone (the reference trains it from '
                    'scratch): drop config.init.backbone.')
  return path


def backbone_subtree(variables: Mapping, path: tuple[str, ...]) -> dict:
  """{'params': resnet params, 'batch_stats': resnet stats} of a segmentor's variables."""
  out = {}
  for collection in ('params', 'batch_stats'):
    node = variables[collection]
    for name in path:
      node = node[name]
    out[collection] = node
  return out


def with_backbone(variables: Mapping, backbone: Mapping, path: tuple[str, ...]) -> dict:
  """A copy of ``variables`` whose ResNet leaves are replaced by ``backbone``'s."""
  flat = traverse_util.flatten_dict(dict(jax.tree_util.tree_map(lambda x: x, dict(variables))))
  for leaf, value in traverse_util.flatten_dict(dict(backbone)).items():
    flat[(leaf[0], *path, *leaf[1:])] = jnp.asarray(value)
  return traverse_util.unflatten_dict(flat)


def _backbone_keys(state_dict: Mapping[str, np.ndarray]) -> tuple[dict, tuple[str, ...]]:
  if state_dict and all(k.startswith('backbone.') or k.startswith(IGNORED_PREFIXES)
                        for k in state_dict):
    state_dict = {k.removeprefix('backbone.'): v for k, v in state_dict.items()}
  ignored = tuple(sorted(k for k in state_dict if k.startswith(IGNORED_PREFIXES)))
  return {k: v for k, v in state_dict.items() if k not in ignored}, ignored


def _stem_hint(keys, model_stem: str) -> str:
  file_stem = 'classic' if 'conv1.weight' in keys else 'deep' if 'stem.0.weight' in keys else None
  if file_stem and file_stem != model_stem:
    return (f"the file has a {'7x7 (torchvision)' if file_stem == 'classic' else 'deep v1c'} "
            f"stem but the model's stem is {model_stem!r}: set model.stem={file_stem!r} or use a "
            f"{'v1c (OpenMMLab)' if model_stem == 'deep' else 'torchvision'} file.")
  return 'use an ImageNet ResNet file of the same depth as the model.'


def load_backbone(path: str | os.PathLike, variables: Mapping, model: ModelSpec
                  ) -> tuple[dict, ImportReport]:
  """Returns ``variables`` (of ``model``) with the ResNet replaced by the file's weights, and a
  report."""
  where = backbone_path(model)
  state_dict, ignored = _backbone_keys(torch_files.read_state_dict(path))
  template = backbone_subtree(variables, where)
  expected = layout.key_table(template)
  if not set(state_dict) & set(expected):
    raise UserError(f'{path} matches no key of the ResNet backbone; '
                    f'{_stem_hint(state_dict, model.stem)}')
  backbone = layout.match_state_dict(state_dict, template, what=str(path),
                                     hint=_stem_hint(state_dict, model.stem))
  matched = len(traverse_util.flatten_dict(backbone))
  return with_backbone(variables, backbone, where), ImportReport(matched, ignored)
