"""A training run's checkpoints (orbax): the model checkpoint's items plus the optimizer state.

Each ``workdir/checkpoints/<step>/`` holds ``checkpoint.VARIABLES``, ``checkpoint.MODEL_CONFIG``
and ``checkpoint.DATASET`` (so any command reads it as a model checkpoint) and ``optimizer``
(the optax state and the step). Saves are asynchronous; a checkpoint left unfinished by a crash
is a temporary folder that is never read and that the next run removes.
"""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp

from bisenet_jax import checkpoint
from bisenet_jax.errors import UserError
from bisenet_jax.specs import DatasetSpec, ModelSpec

OPTIMIZER = 'optimizer'


def make_manager(workdir: Path, keep: int) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the newest ``keep`` checkpoints. Close it (``close``)
  on every way out: it runs background threads."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                         create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(workdir / checkpoint.TRAIN_CHECKPOINTS, options=options)


def save(manager: ocp.CheckpointManager, state, model: ModelSpec, dataset: DatasetSpec) -> None:
  manager.save(int(state.step), args=ocp.args.Composite(**{
      checkpoint.VARIABLES: ocp.args.StandardSave(
          {'params': state.params, 'batch_stats': state.batch_stats}),
      OPTIMIZER: ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
      checkpoint.MODEL_CONFIG: ocp.args.JsonSave(model.checkpoint_config()),
      checkpoint.DATASET: ocp.args.JsonSave(dataset.to_json()),
  }))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, model: ModelSpec):
  """Restores ``step`` into the shapes and shardings of ``abstract_state``.

  Raises:
    UserError: the checkpoint holds another model than ``model``.
  """
  restored = manager.restore(step, args=ocp.args.Composite(**{
      checkpoint.VARIABLES: ocp.args.StandardRestore(
          {'params': abstract_state.params, 'batch_stats': abstract_state.batch_stats}),
      OPTIMIZER: ocp.args.StandardRestore(
          {'opt_state': abstract_state.opt_state, 'step': abstract_state.step}),
      checkpoint.MODEL_CONFIG: ocp.args.JsonRestore(),
  }))
  stored = dict(restored[checkpoint.MODEL_CONFIG])
  if stored != model.checkpoint_config():
    raise UserError(f'The checkpoint in {manager.directory} is of another model ({stored}); '
                    'use a new --workdir.')
  variables, optimizer = restored[checkpoint.VARIABLES], restored[OPTIMIZER]
  return abstract_state.replace(params=variables['params'],
                                batch_stats=variables['batch_stats'],
                                opt_state=optimizer['opt_state'], step=optimizer['step'])
