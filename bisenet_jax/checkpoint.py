"""Model checkpoints on disk (orbax) and ``load_pretrained``.

A *model checkpoint* is an orbax composite directory with the items ``variables``
({'params', 'batch_stats'}), ``model_config`` (JSON: ``ModelSpec.checkpoint_config()``, e.g.
``{"name": "bisenetv1_r18", "num_classes": 19, "stem": "deep"}``) and ``dataset`` (JSON:
``specs.DatasetSpec``, the class names and colours the model predicts and its dataset's
layout; absent from checkpoints of unknown classes). The converter writes exactly that; every
training checkpoint step directory holds the same items next to the optimizer state, so
anything that reads a model (``load_pretrained``, evaluation, prediction, fine-tuning) reads
both kinds the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from absl import logging

from bisenet_jax import models
from bisenet_jax.data import sources
from bisenet_jax.errors import UserError
from bisenet_jax.specs import DatasetSpec, ModelSpec

VARIABLES = 'variables'
EMA = 'ema_variables'  # The exponential moving average of the variables, when kept.
MODEL_CONFIG = 'model_config'
DATASET = 'dataset'
TRAIN_CHECKPOINTS = 'checkpoints'  # Sub-folder of a training workdir.


def save_model(directory: str | os.PathLike, variables: dict, model: ModelSpec,
               dataset: DatasetSpec | None = None, ema: dict | None = None) -> Path:
  """Writes a model checkpoint; orbax writes to a temporary folder and renames at the end.

  ``ema``: the EMA of the variables, when there is one.
  """
  directory = Path(directory).absolute()
  if directory.exists():
    raise UserError(f'{directory} already exists; remove it or choose another output folder.')
  items = {VARIABLES: ocp.args.StandardSave(_model_variables(variables)),
           MODEL_CONFIG: ocp.args.JsonSave(model.checkpoint_config())}
  if dataset is not None:
    items[DATASET] = ocp.args.JsonSave(dataset.to_json())
  if ema is not None:
    items[EMA] = ocp.args.StandardSave(_model_variables(ema))
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    checkpointer.save(directory, ocp.args.Composite(**items))
  return directory


def _model_variables(variables: dict) -> dict:
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


def _is_model_checkpoint(directory: Path) -> bool:
  return (directory / VARIABLES).is_dir() and (directory / MODEL_CONFIG).exists()


def finalized_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of a training workdir whose checkpoints orbax has finished writing, ascending.

  A checkpoint being written (or left half-written by a crash) is not listed: orbax writes
  into a temporary folder and finalizes it only once every process has written its part.
  """
  return sorted(ocp.step.checkpoint_steps(Path(workdir) / TRAIN_CHECKPOINTS))


def _latest_training_step(workdir: Path) -> Path | None:
  """The newest finalized step folder of a training workdir, or None."""
  steps = finalized_steps(workdir) if (workdir / TRAIN_CHECKPOINTS).is_dir() else []
  return workdir / TRAIN_CHECKPOINTS / str(steps[-1]) if steps else None


def resolve_model_checkpoint(path: str | os.PathLike) -> Path:
  """Accepts a model checkpoint, a training step folder or a training workdir (latest step)."""
  path = Path(path).absolute()
  if _is_model_checkpoint(path):
    return path
  latest = _latest_training_step(path) if path.is_dir() else None
  if latest is None:
    raise UserError(
        f'{path} is not a model checkpoint (expected an official .pth file, a folder written by '
        'convert/ssseg_to_flax.py, or a training workdir with checkpoints/<step>/).')
  return latest


def read_json(directory: Path, item: str):
  """A JSON item of a checkpoint folder."""
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    return checkpointer.restore(directory, ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[
        item]


def restore_model(path: str | os.PathLike, ema: bool | None = None) -> tuple[ModelSpec, dict]:
  """Reads ``(model spec, variables)`` from a model checkpoint or a training workdir.

  Args:
    path: the checkpoint.
    ema: True reads the EMA of the variables (an error without one), False the variables,
      None the EMA when there is one.

  The variables land on this process's first device, whatever devices and processes wrote
  them (orbax would otherwise insist on the writer's layout).
  """
  directory = resolve_model_checkpoint(path)
  item = _variables_item(directory, ema)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as reader, _absl_errors_only():
    # orbax warns that this item has no step metadata file of its own: the step folder holds it.
    stored = reader.metadata(directory / item).item_metadata
  target = jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), stored)
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(directory, ocp.args.Composite(**{
        item: ocp.args.StandardRestore(target),
        MODEL_CONFIG: ocp.args.JsonRestore(),
    }))
  return ModelSpec.from_checkpoint_config(dict(restored[MODEL_CONFIG])), dict(restored[item])


def is_torch_file(path: str | os.PathLike) -> bool:
  """An official (PyTorch) checkpoint, as opposed to an orbax folder."""
  return Path(path).suffix in ('.pth', '.pt')


def open_checkpoint(path: str | os.PathLike) -> str | os.PathLike:
  """``path``, ready for several of this module's readers: a ``.pth`` is unpickled here, once
  (``torch_files.OpenedFile``, a path-like that carries its contents), rather than by each of
  ``load_model``, ``has_ema`` and their helpers; a checkpoint folder stays its path."""
  if not is_torch_file(path):
    return path
  from bisenet_jax.interop import torch_files  # Imports torch when reading.
  return torch_files.open_file(path)


def has_ema(path: str | os.PathLike) -> bool:
  """Whether a checkpoint (``.pth``, model checkpoint, training workdir or ``open_checkpoint``'s
  result) keeps an EMA of its variables."""
  if is_torch_file(path):
    from bisenet_jax.interop import torch_files
    return torch_files.has_entry(path, 'model_ema')
  return (resolve_model_checkpoint(path) / EMA).is_dir()


def _variables_item(directory: Path, ema: bool | None) -> str:
  if ema and not (directory / EMA).is_dir():
    raise UserError(f'{directory} has no EMA of its variables (the run was trained without '
                    'config.ema.momentum): drop --ema')
  return EMA if ema is not False and (directory / EMA).is_dir() else VARIABLES


@contextlib.contextmanager
def _absl_errors_only():
  """absl (orbax's logger) shows only errors inside the block."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def load_model(path: str | os.PathLike, ema: bool | None = None
               ) -> tuple[ModelSpec, dict, DatasetSpec | None]:
  """``(model spec, variables, dataset)`` from an official ``.pth`` or any model checkpoint.

  Args:
    path: an sssegmentation ``.pth`` (converted in memory; needs torch; read once), a folder
      written by ``convert/ssseg_to_flax.py``, a training step folder or a training workdir, or
      ``open_checkpoint``'s result for any of them.
    ema: True loads the EMA of the variables (``model_ema`` of a ``.pth``), False the
      variables, None the EMA when there is one.

  Returns:
    The model, its variables, and the dataset it records (``read_dataset``).
  """
  if is_torch_file(path):
    from bisenet_jax.interop import ssseg  # Imports torch: only when a .pth is given.
    spec, variables = ssseg.load_official_checkpoint(open_checkpoint(path), ema=ema)
  else:
    spec, variables = restore_model(path, ema)
  return spec, variables, read_dataset(path, spec.num_classes)


def load_pretrained(path: str | os.PathLike, ema: bool | None = None, **overrides):
  """``(Flax model, variables)`` from an official ``.pth`` or any model checkpoint.

  Args:
    path, ema: as ``load_model``.
    **overrides: ``ModelSpec`` fields to change, e.g. ``dtype='bfloat16'``.
  """
  spec, variables, _ = load_model(path, ema)
  return models.build(dataclasses.replace(spec, **overrides)), variables


def read_dataset(path: str | os.PathLike, num_classes: int) -> DatasetSpec | None:
  """The dataset a model checkpoint records, or None when its classes are unknown.

  An official ``.pth``, or a checkpoint that predates the ``dataset`` item, records none: with
  19 classes it is a Cityscapes model, otherwise its classes are unknown.
  """
  if not is_torch_file(path):
    directory = resolve_model_checkpoint(path)
    if (directory / DATASET).exists():
      return DatasetSpec.from_json(dict(read_json(directory, DATASET)))
  return sources.CITYSCAPES if num_classes == sources.CITYSCAPES.classes.num_classes else None


def export_official_checkpoint(model_path: str | os.PathLike, output: str | os.PathLike,
                               num_batches_tracked: int = 0) -> Path:
  """A model checkpoint (or training workdir) -> ``{'model': state_dict}`` ``.pth`` (needs torch),
  with ``'model_ema'`` beside it when the checkpoint keeps an EMA, as sssegmentation writes."""
  from bisenet_jax.interop import ssseg, torch_files  # Imports torch.
  entries = {'model': restore_model(model_path, ema=False)[1]}
  if has_ema(model_path):
    entries['model_ema'] = restore_model(model_path, ema=True)[1]
  return torch_files.write_state_dicts(
      {entry: ssseg.export_state_dict(variables, num_batches_tracked)
       for entry, variables in entries.items()}, output)
