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

CLASSIFIER_KEY = 'decoder.4.weight'
CLASSIC_STEM_KEY = 'backbone_net.context_path.backbone_net.conv1.weight'


@functools.lru_cache(maxsize=None)
def _template(name: str, num_classes: int, stem: str) -> dict:
  """Variable shapes of a model, from ``jax.eval_shape`` (no memory, no compute)."""
  model = models.build_model(name, num_classes, stem=stem)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)


def template(config: Mapping) -> dict:
  return _template(config['name'], config['num_classes'], config.get('stem', 'deep'))


def arch_name(arch: str) -> str:
  """'r18' or 'bisenetv1_r18' -> 'bisenetv1_r18'."""
  name = arch if arch in models.ARCHS else f'bisenetv1_{arch}'
  if name not in models.ARCHS:
    choices = ', '.join(n.removeprefix('bisenetv1_') for n in models.ARCHS)
    raise UserError(f'Unknown architecture {arch!r}; choose one of {choices}.')
  return name


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str | None = None, *,
                       source: str = 'the checkpoint') -> tuple[dict, dict]:
  """Returns ``(model_config, variables)`` for an sssegmentation FCN-BiSeNetV1 state dict.

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
    config = models.model_config(name, num_classes, stem)
    try:
      return config, layout.match_state_dict(
          state_dict, template(config), what=f'{source} as {name}',
          hint='pass the matching --arch, or check that the file is an sssegmentation '
          'FCN-BiSeNetV1 model.')
    except layout.KeyMismatchError as e:
      failures.append(e)
  raise min(failures, key=lambda e: len(str(e).splitlines()))


def load_official_checkpoint(path: str | os.PathLike, arch: str | None = None) -> tuple[dict, dict]:
  """Reads an official ``.pth`` (full training checkpoint, bare or ``module.``-prefixed)."""
  config, variables = convert_state_dict(torch_files.read_state_dict(path), arch,
                                         source=str(path))
  return config, jax.tree_util.tree_map(jnp.asarray, variables)


def export_state_dict(variables: Mapping, num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """Flax variables -> a state dict in the reference layout (strict-loadable in sssegmentation)."""
  return layout.variables_to_state_dict(
      {'params': variables['params'], 'batch_stats': variables['batch_stats']},
      num_batches_tracked)
