"""From a dataset's description to its classes and its random-access sources.

Training (``train.config``), evaluation and prediction (``bisenet_jax.cli``) describe a dataset
with a ``specs.DatasetSpec``; this module resolves what the description leaves to the files (a
folder dataset's ``classes.txt``) and opens its splits. Every source yields samples
``{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W] class ids, 'name': str}``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bisenet_jax.data import cityscapes, folder, records
from bisenet_jax.data.class_sets import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from bisenet_jax.data.classes import CLASSES_FILE, read_classes_file
from bisenet_jax.errors import UserError
from bisenet_jax.specs import (KINDS, RESIZE_TO, ClassSet, DataSpec, DatasetSpec, FolderLayout,
                               Size)

_PRESET_CLASSES = {'cityscapes': CITYSCAPES_CLASSES, 'voc': VOC_CLASSES, 'ade20k': ADE20K_CLASSES}
CITYSCAPES = DatasetSpec('cityscapes', CITYSCAPES_CLASSES)


def dataset_classes(kind: str, root: str | Path | None = None) -> ClassSet:
  """The classes of a dataset kind: a preset, or ``root/classes.txt`` for 'folder'."""
  if kind not in KINDS:
    raise UserError(f'Unknown dataset {kind!r}: choose one of {", ".join(KINDS)}.')
  if kind != 'folder':
    return _PRESET_CLASSES[kind]
  if root is None:
    raise UserError('A folder dataset needs its root (with classes.txt) to know its classes.')
  return read_classes_file(Path(root).expanduser() / CLASSES_FILE)


def resolve_dataset(kind: str | None = None, *, root: str | Path | None = None,
                    classes: ClassSet | None = None, recorded: DatasetSpec | None = None,
                    layout: dict | None = None, resize_to: Size | None = None) -> DatasetSpec:
  """The dataset a command works on: what it was told, else what the checkpoint recorded.

  Args:
    kind: the dataset kind; None takes the recorded one, else 'cityscapes'.
    root: the dataset root, where a folder dataset's classes.txt is read when neither
      ``classes`` nor a record of the same kind gives them.
    classes: the classes, when given explicitly (a ``--classes`` file).
    recorded: what a checkpoint or exported file records (None when it records nothing).
    layout: ``FolderLayout`` fields to set; the others come from the record of the same kind,
      else the defaults.
    resize_to: the test resize target; default: the record's, else the kind's recipe's.

  Raises:
    UserError: a folder dataset whose classes nothing gives.
  """
  kind = kind or (recorded.kind if recorded else 'cityscapes')
  same = recorded if recorded is not None and recorded.kind == kind else None
  if classes is None and same is not None:
    classes = same.classes
  if classes is None:
    if kind == 'folder' and root is None:
      raise UserError('the checkpoint records no classes: pass --classes classes.txt (one class '
                      'name per line, optionally with its colour: name R G B)')
    classes = dataset_classes(kind, root)
  base_layout = same.layout if same else FolderLayout()
  return DatasetSpec(kind, classes, dataclasses.replace(base_layout, **(layout or {})),
                     tuple(resize_to or (same.resize_to if same else RESIZE_TO[kind])))


def open_split(dataset: DatasetSpec, root: str | Path, split: str):
  """A random-access source of ``split`` of ``dataset`` under ``root``.

  For 'folder', ``dataset.classes`` is used (the dataset's classes.txt is not needed).
  """
  root = Path(root).expanduser()
  if dataset.kind == 'cityscapes':
    return cityscapes.CityscapesFolder(root, split)
  if dataset.kind == 'voc':
    return folder.PascalVocFolder(root, split)
  if dataset.kind == 'ade20k':
    return folder.Ade20kFolder(root, split)
  layout = dataset.layout
  return folder.SegmentationFolder(
      root, split, dataset.classes, image_dir=layout.image_dir, mask_dir=layout.mask_dir,
      mask_suffix=layout.mask_suffix, ignore_index=layout.ignore_index,
      reduce_zero_label=layout.reduce_zero_label, label_map=layout.label_map_dict())


def open_training_sources(data: DataSpec, log=print):
  """(train, val) random-access sources of a training run's data, read through decoded-frame
  records when ``data.records`` is set (built first if needed; ``log`` prints their lines)."""
  splits = (data.train_split, data.val_split)
  if data.source == 'synthetic':
    from bisenet_jax.data import synthetic  # The demo's generator draws with OpenCV.
    root = synthetic.ensure_synthetic_cityscapes(Path(data.root).expanduser(), **data.synthetic)
    opened = [cityscapes.CityscapesFolder(root, split) for split in splits]
  elif data.source == 'tfds':
    from bisenet_jax.data.tfds import TfdsCityscapes  # Imports tensorflow_datasets.
    opened = [TfdsCityscapes(split, data.tfds_data_dir or None) for split in splits]
  else:
    opened = [open_split(data.dataset, data.root, split) for split in splits]
  return tuple(with_records(source, data.records, flag='--config.data.records', log=log)
               for source in opened)


def with_records(source, records_dir: str | Path | None, *, flag: str, log=print):
  """``source`` read through decoded-frame records in ``records_dir`` (``records.open_records``),
  or as it is when ``records_dir`` is None. ``flag`` names the setting in messages."""
  if records_dir is None:
    return source
  return records.open_records(source, records_dir, remedy=records.remedy_for(flag), log=log)


DATASET_NAMES = {'cityscapes': 'Cityscapes', 'folder': 'the folder dataset',
                 'voc': 'Pascal VOC', 'ade20k': 'ADE20K'}


def check_classes(path: str, num_classes: int, dataset: DatasetSpec) -> None:
  """The model must predict as many classes as the dataset has."""
  if num_classes != dataset.classes.num_classes:
    raise UserError(f'checkpoint {path} has {num_classes} classes, '
                    f'{DATASET_NAMES[dataset.kind]} has {dataset.classes.num_classes}: use a '
                    'checkpoint trained for these classes, or pass the matching --dataset / '
                    '--classes')
