"""The one rule between a Flax variable path and a PyTorch state-dict key, and strict matching.

A Flax path ``('params', 'backbone_net', 'ffm', 'conv1.0', 'kernel')`` is the PyTorch key
``backbone_net.ffm.conv1.0.weight``: module names are joined with dots and the leaf is renamed
(kernel/scale -> weight, mean -> running_mean, var -> running_var). Conv kernels move between
HWIO (Flax) and OIHW (PyTorch).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import traverse_util

from bisenet_jax.errors import UserError

LEAF_TO_TORCH = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('params', 'bias'): 'bias',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
NUM_BATCHES_TRACKED = 'num_batches_tracked'


def torch_key(path: tuple[str, ...]) -> str:
  """('params', *modules, leaf) -> 'modules.joined.by.dots.torch_leaf'."""
  collection, *modules, leaf = path
  return '.'.join([*modules, LEAF_TO_TORCH[(collection, leaf)]])


def to_torch_layout(value: np.ndarray) -> np.ndarray:
  """HWIO conv kernel -> OIHW; everything else unchanged."""
  return np.transpose(value, (3, 2, 0, 1)) if value.ndim == 4 else value


def to_flax_layout(value: np.ndarray) -> np.ndarray:
  """OIHW conv weight -> HWIO; everything else unchanged."""
  return np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value


def torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def key_table(variables: Mapping) -> dict[str, tuple[str, ...]]:
  """PyTorch key -> Flax path for every leaf of ``variables`` (arrays or ShapeDtypeStructs)."""
  flat = traverse_util.flatten_dict(dict(variables))
  return {torch_key(path): path for path in flat}


def bn_prefixes(table: Mapping[str, tuple[str, ...]]) -> list[str]:
  """Module prefixes of every BatchNorm (the keys that have a running mean)."""
  return [key[:-len('.running_mean')] for key in table if key.endswith('.running_mean')]


class KeyMismatchError(UserError):
  """A state dict does not fit the model; the message lists every offending key."""


def match_state_dict(state_dict: Mapping[str, np.ndarray], template: Mapping, *,
                     what: str, hint: str) -> dict:
  """Strictly maps a state dict onto ``template``'s tree, returning a new variables dict.

  ``num_batches_tracked`` counters are accepted and dropped. Anything missing, unexpected or of
  the wrong shape raises ``KeyMismatchError`` listing *all* such keys, so nothing half-loaded
  is ever returned.
  """
  table = key_table(template)
  flat_template = traverse_util.flatten_dict(dict(template))
  counters = {f'{p}.{NUM_BATCHES_TRACKED}' for p in bn_prefixes(table)}
  given = {k: v for k, v in state_dict.items() if k not in counters}
  missing = sorted(set(table) - set(given))
  unexpected = sorted(set(given) - set(table))
  wrong_shape = sorted(
      f'{k}: file {tuple(np.shape(given[k]))}, model {torch_shape(flat_template[table[k]].shape)}'
      for k in set(given) & set(table)
      if tuple(np.shape(given[k])) != torch_shape(flat_template[table[k]].shape))
  if missing or unexpected or wrong_shape:
    raise KeyMismatchError(describe_mismatch(what, hint, missing, unexpected, wrong_shape))
  flat = {table[k]: np.array(to_flax_layout(np.asarray(v)), np.float32)  # A copy, never a view.
          for k, v in given.items()}
  return traverse_util.unflatten_dict(flat)


def describe_mismatch(what: str, hint: str, missing, unexpected, wrong_shape) -> str:
  counts = f'{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} mis-shaped'
  lines = [f'{what} does not fit the model ({counts}); {hint}']
  for title, keys in (('missing', missing), ('unexpected', unexpected),
                      ('wrong shape', wrong_shape)):
    lines += [f'  {title}: {k}' for k in keys]
  return '\n'.join(lines)


def variables_to_state_dict(variables: Mapping, num_batches_tracked: int = 0) -> dict:
  """Flax variables -> PyTorch-layout numpy arrays, grouped per module like ``state_dict()``.

  Each BatchNorm gets its ``num_batches_tracked`` counter (int64) after its running stats,
  so the result loads into the reference model with ``strict=True``.
  """
  table = key_table(variables)
  flat = traverse_util.flatten_dict(dict(variables))
  by_module: dict[str, dict[str, np.ndarray]] = {}
  for key, path in table.items():
    module, leaf = key.rsplit('.', 1)
    by_module.setdefault(module, {})[leaf] = to_torch_layout(np.asarray(flat[path]))
  order = ('weight', 'bias', 'running_mean', 'running_var')
  state_dict = {}
  for module, leaves in by_module.items():
    for leaf in order:
      if leaf in leaves:
        state_dict[f'{module}.{leaf}'] = leaves[leaf]
    if 'running_mean' in leaves:
      state_dict[f'{module}.{NUM_BATCHES_TRACKED}'] = np.asarray(num_batches_tracked, np.int64)
  return state_dict
