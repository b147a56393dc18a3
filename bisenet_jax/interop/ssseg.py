"""Official sssegmentation checkpoints of any registered network <-> Flax variables.

The network, stem and class count are read from the tensors, so an official file needs no other
argument: for every network of ``specs.NETWORKS`` (and each of its stems) whose main classifier
key the file has (``decoder.4.weight`` for the FCN heads, ``decoder.3.weight`` for Fast-SCNN's
depthwise-separable one), that key's shape gives the classes, and the file must then match the
network's variables exactly (``layout.match_state_dict``).
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
from bisenet_jax.specs import NETWORKS, ModelSpec, network


@functools.lru_cache(maxsize=None)
def template(spec: ModelSpec) -> dict:
  """Variable shapes of a model, from ``jax.eval_shape`` (no memory, no compute)."""
  return models.abstract_variables(models.build(spec))


@functools.lru_cache(maxsize=None)
def main_classifier_key(spec: ModelSpec) -> str:
  """The state-dict key of the main head's classifier weight (shape: classes first)."""
  path, = (p for p in models.classifier_paths(spec) if p[0] == 'decoder')
  return layout.torch_key(('params', *path, 'kernel'))


def candidates(state_dict: Mapping[str, np.ndarray], name: str | None = None
               ) -> list[ModelSpec]:
  """Every (network, stem, class count) the state dict may hold: the networks (only ``name``,
  when given) whose main classifier key it has, with that key's class count."""
  if name:
    network(name)  # A one-line error for an unknown name.
  found = []
  for net_name in [name] if name else NETWORKS:
    for stem in NETWORKS[net_name].stems or (None,):
      key = main_classifier_key(ModelSpec(net_name, 19, stem))
      if key in state_dict:
        found.append(ModelSpec(net_name, int(state_dict[key].shape[0]), stem))
  return found


def convert_state_dict(state_dict: Mapping[str, np.ndarray], name: str | None = None, *,
                       source: str = 'the checkpoint') -> tuple[ModelSpec, dict]:
  """Returns ``(model spec, variables)`` for an sssegmentation state dict.

  Args:
    state_dict: PyTorch keys -> arrays (no ``module.`` prefix).
    name: a network name (``specs.NETWORKS``) to force; by default the one whose keys match.
    source: how to name the input in error messages.
  Raises:
    UserError: no network has the file's classifier key (naming the keys looked for), or none
      matches it exactly (listing every missing, unexpected or mis-shaped key of the closest).
  """
  specs = candidates(state_dict, name)
  if not specs:
    looked_for = sorted({f'{main_classifier_key(ModelSpec(n, 19))} ({n})'
                         for n in ([name] if name else NETWORKS)})
    raise UserError(f'{source} is not a checkpoint of {name or "a known network"}: it has none '
                    f'of the main classifier keys {", ".join(looked_for)} (is it an ImageNet '
                    'backbone file? use convert/imagenet_backbone.py for those).')
  failures = []
  for spec in specs:
    try:
      return spec, layout.match_state_dict(
          state_dict, template(spec), what=f'{source} as {spec.name}',
          hint=f'it is not an sssegmentation {spec.network.title} model'
          f'{"" if name else " (pass --arch to force another network)"}.')
    except layout.KeyMismatchError as e:
      failures.append(e)
  raise min(failures, key=lambda e: len(str(e).splitlines()))


def load_official_checkpoint(path: str | os.PathLike, name: str | None = None,
                             ema: bool | None = None) -> tuple[ModelSpec, dict]:
  """Reads an official ``.pth`` (full training checkpoint, bare or ``module.``-prefixed).

  ``ema``: True reads its ``model_ema`` (an error without one), False its ``model``, None the
  ``model_ema`` when it has one.
  """
  if ema is None:
    ema = torch_files.has_entry(path, 'model_ema')
  state_dict = torch_files.read_state_dict(path, 'model_ema' if ema else None)
  spec, variables = convert_state_dict(state_dict, name, source=str(path))
  return spec, jax.tree_util.tree_map(jnp.asarray, variables)


def export_state_dict(variables: Mapping, num_batches_tracked: int = 0) -> dict[str, np.ndarray]:
  """Flax variables -> a state dict in the reference layout (strict-loadable in sssegmentation)."""
  return layout.variables_to_state_dict(
      {'params': variables['params'], 'batch_stats': variables['batch_stats']},
      num_batches_tracked)
