"""A training run's checkpoints (orbax): the model checkpoint's items plus the optimizer state.

Each ``workdir/checkpoints/<step>/`` holds ``checkpoint.VARIABLES``, ``checkpoint.MODEL_CONFIG``
and ``checkpoint.DATASET`` (so any command reads it as a model checkpoint), ``checkpoint.EMA``
when the run keeps an EMA of the variables, ``optimizer`` (the optax state, the step and, for
float16, the loss scale) and ``train_options`` (which of those the run keeps, so a resume with
other options is refused in one line). Saves are asynchronous; a checkpoint left unfinished by a
crash is a temporary folder that is never read and that the next run removes.
"""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp

from bisenet_jax import checkpoint
from bisenet_jax.errors import UserError
from bisenet_jax.specs import DatasetSpec, ModelSpec

OPTIMIZER = 'optimizer'
TRAIN_OPTIONS = 'train_options'


def make_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the newest ``keep`` checkpoints. Close it (``close``)
  on every way out: it runs background threads."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                         create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(workdir / checkpoint.TRAIN_CHECKPOINTS, options=options)


def _options(state) -> dict:
  return {'ema': state.ema is not None, 'float16_loss_scale': state.loss_scale is not None}


def _optimizer_tree(state) -> dict:
  tree = {'opt_state': state.opt_state, 'step': state.step}
  if state.loss_scale is not None:
    tree['loss_scale'] = state.loss_scale
  return tree


def save(manager: ocp.CheckpointManager, state, model: ModelSpec, dataset: DatasetSpec) -> None:
  items = {
      checkpoint.VARIABLES: ocp.args.StandardSave(state.variables()),
      OPTIMIZER: ocp.args.StandardSave(_optimizer_tree(state)),
      checkpoint.MODEL_CONFIG: ocp.args.JsonSave(model.checkpoint_config()),
      checkpoint.DATASET: ocp.args.JsonSave(dataset.to_json()),
      TRAIN_OPTIONS: ocp.args.JsonSave(_options(state)),
  }
  if state.ema is not None:
    items[checkpoint.EMA] = ocp.args.StandardSave(state.ema)
  manager.save(int(state.step), args=ocp.args.Composite(**items))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, model: ModelSpec):
  """Restores ``step`` into the shapes and shardings of ``abstract_state``.

  Raises:
    UserError: the checkpoint holds another model than ``model``, or was written with other
      options (EMA, float16) than ``abstract_state`` keeps.
  """
  folder = Path(manager.directory) / str(step)
  stored = dict(checkpoint.read_json(folder, checkpoint.MODEL_CONFIG))
  if stored != model.checkpoint_config():
    stored_model = ModelSpec.from_checkpoint_config(stored)
    raise UserError(f'The checkpoint in {manager.directory} holds {stored_model.name} '
                    f'({stored_model.num_classes} classes), this run trains {model.name} '
                    f'({model.num_classes} classes): use a new --workdir, or resume it with '
                    f'its config ({stored_model.network.config}).')
  stored_options = (checkpoint.read_json(folder, TRAIN_OPTIONS) if (folder / TRAIN_OPTIONS).exists()
                    else {'ema': False, 'float16_loss_scale': False})
  if stored_options != _options(abstract_state):
    raise UserError(f'The checkpoint in {manager.directory} was written with {stored_options}, '
                    f'this run keeps {_options(abstract_state)} (config.ema.momentum, '
                    'config.model.dtype): resume with the same options or use a new --workdir.')
  items = {
      checkpoint.VARIABLES: ocp.args.StandardRestore(abstract_state.variables()),
      OPTIMIZER: ocp.args.StandardRestore(_optimizer_tree(abstract_state)),
  }
  if abstract_state.ema is not None:
    items[checkpoint.EMA] = ocp.args.StandardRestore(abstract_state.ema)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  variables, optimizer = restored[checkpoint.VARIABLES], restored[OPTIMIZER]
  return abstract_state.replace(
      params=variables['params'], batch_stats=variables['batch_stats'],
      opt_state=optimizer['opt_state'], step=optimizer['step'],
      loss_scale=optimizer.get('loss_scale'),
      ema=restored[checkpoint.EMA] if abstract_state.ema is not None else None)
