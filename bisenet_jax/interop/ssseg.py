"""Official sssegmentation FCN-BiSeNetV1 checkpoints <-> Flax variables.

The architecture and class count are read from the tensor shapes, so an official file needs no
other argument: ``decoder.4.weight`` gives the classes, the stem keys give the stem type, and
the remaining shapes must match one of ``models.ARCHS`` exactly.
"""

from __future__ import annotations

import functools
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bisenet_jax import models
from bisenet_jax.errors import UserError
from bisenet_jax.interop import layout, torch_files
from bisenet_jax.specs import ModelSpec

CLASSIFIER_KEY = 'decoder.4.weight'
CLASSIC_STEM_KEY = 'backbone_net.context_path.backbone_net.conv1.weight'


@functools.lru_cache(maxsize=None)
def template(spec: ModelSpec) -> dict:
  """Variable shapes of a model, from ``jax.eval_shape`` (no memory, no compute)."""
  return models.abstract_variables(spec.build())


def arch_name(arch: str) -> str:
  """'r18' or 'bisenetv1_r18' -> 'bisenetv1_r18'."""
  name = arch if arch in models.ARCHS else f'bisenetv1_{arch}'
  if name not in models.ARCHS:
    choices = ', '.join(n.removeprefix('bisenetv1_') for n in models.ARCHS)
    raise UserError(f'Unknown architecture {arch!r}; choose one of {choices}.')
  return name


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str | None = None, *,
                       source: str = 'the checkpoint') -> tuple[ModelSpec, dict]:
  """Returns ``(model spec, variables)`` for an sssegmentation FCN-BiSeNetV1 state dict.

  Args:
    state_dict: PyTorch keys -> arrays (no ``module.`` prefix).
    arch: 'r18' / 'r50' to force an architecture; by default the one whose shapes match.
    source: how to name the input in error messages.
  Raises:
    UserError: listing every missing, unexpected or mis-shaped key of the best candidate.
  """
  if CLASSIFIER_KEY not in state_dict:
    raise UserError(f'{source} is not an FCN-BiSeNetV1 checkpoint: it has no {CLASSIFIER_KEY!r} '
                    '(is it an ImageNet backbone file? use convert/imagenet_backbone.py for those).')
  num_classes = int(state_dict[CLASSIFIER_KEY].shape[0])
  stem = 'classic' if CLASSIC_STEM_KEY in state_dict else 'deep'
  names = [arch_name(arch)] if arch else list(models.ARCHS)
  failures = []
  for name in names:
    spec = ModelSpec(name, num_classes, stem)
    try:
      return spec, layout.match_state_dict(
          state_dict, template(spec), what=f'{source} as {name}',
          hint='pass the matching --arch, or check that the file is an sssegmentation '
          'FCN-BiSeNetV1 model.')
    except layout.KeyMismatchError as e:
      failures.append(e)
  raise min(failures, key=lambda e: len(str(e).splitlines()))


def load_official_checkpoint(path: str | os.PathLike, arch: str | None = None,
                             ema: bool | None = None) -> tuple[ModelSpec, dict]:
  """Reads an official ``.pth`` (full training checkpoint, bare or ``module.``-prefixed).

  ``ema``: True reads its ``model_ema`` (an error without one), False its ``model``, None the
  ``model_ema`` when it has one.
  """
  if ema is None:
    ema = torch_files.has_entry(path, 'model_ema')
  state_dict = torch_files.read_state_dict(path, 'model_ema' if ema else None)
  spec, variables = convert_state_dict(state_dict, arch, source=str(path))
  return spec, jax.tree_util.tree_map(jnp.asarray, variables)


def export_state_dict(variables: Mapping, num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """Flax variables -> a state dict in the reference layout (strict-loadable in sssegmentation)."""
  return layout.variables_to_state_dict(
      {'params': variables['params'], 'batch_stats': variables['batch_stats']},
      num_batches_tracked)
