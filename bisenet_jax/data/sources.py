"""Which dataset a model belongs to, and opening its splits: shared by training, evaluation and
prediction, and stored in every model checkpoint (``DatasetInfo.to_json``).

A dataset is a *kind* with its layout options, its classes (names and colours), and the test
Resize base size of its recipe:

* ``cityscapes``: the official folder layout (also the TFDS copy and the synthetic demo);
* ``folder``: any labelled image set (``folder.SegmentationFolder``): images, masks and
  ``classes.txt``, with the folder names, mask suffix and mask-value mapping as options;
* ``voc``: Pascal VOC 2012; ``ade20k``: ADE20K (ADEChallengeData2016).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bisenet_jax.data import cityscapes, folder
from bisenet_jax.errors import UserError

KINDS = ('cityscapes', 'folder', 'voc', 'ade20k')
# The test Resize's (width, height) in each kind's recipe (configs/): Cityscapes' full frames,
# mmsegmentation's 2048x512 for VOC and ADE20K, and configs/custom.py's for folders.
TEST_BASE_SIZES = {'cityscapes': (2048, 1024), 'folder': (1024, 512), 'voc': (2048, 512),
                   'ade20k': (2048, 512)}
_PRESET_CLASSES = {'cityscapes': folder.CITYSCAPES_CLASSES, 'voc': folder.VOC_CLASSES,
                   'ade20k': folder.ADE20K_CLASSES}


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """Where a ``folder`` dataset keeps its files and how its mask values become classes.

  Attributes:
    image_dir: images' folder below the root; '{split}' is replaced by the split.
    mask_dir: masks' folder below the root, likewise.
    mask_suffix: masks' file-name ending.
    ignore_index: the mask value that marks ignored pixels.
    reduce_zero_label: mask value 0 is ignored and value v is class v - 1 (as ADE20K).
    label_map: 'value:class,...' for masks whose values are not the class indices; every
      other value is refused, except ``ignore_index``; a class of 255 means ignore.
  """
  image_dir: str = 'images/{split}'
  mask_dir: str = 'masks/{split}'
  mask_suffix: str = '.png'
  ignore_index: int = 255
  reduce_zero_label: bool = False
  label_map: str = ''

  def label_map_dict(self) -> dict[int, int] | None:
    """``label_map`` as {mask value: class}, or None when it is empty."""
    if not self.label_map.strip():
      return None
    try:
      pairs = [item.split(':') for item in self.label_map.split(',') if item.strip()]
      return {int(value): int(target) for value, target in pairs}
    except ValueError:
      raise UserError(f'label_map {self.label_map!r} is not a list of value:class pairs: write '
                      'e.g. 0:0,128:1,255:255') from None


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """A model's dataset: kind, classes, folder layout and the test Resize base size.

  Attributes:
    kind: one of ``KINDS``.
    classes: the ClassSet the model predicts.
    layout: the folder layout (only used by kind 'folder').
    base_size: (width, height) of the test Resize of its recipe.
  """
  kind: str
  classes: folder.ClassSet
  layout: FolderLayout = FolderLayout()
  base_size: tuple[int, int] = (2048, 1024)

  def to_json(self) -> dict:
    return {'kind': self.kind, 'classes': self.classes.to_json(),
            'layout': dataclasses.asdict(self.layout), 'base_size': list(self.base_size)}

  @classmethod
  def from_json(cls, data: dict) -> DatasetInfo:
    return cls(data['kind'], folder.ClassSet.from_json(data['classes']),
               FolderLayout(**data['layout']), tuple(data['base_size']))


CITYSCAPES = DatasetInfo('cityscapes', folder.CITYSCAPES_CLASSES)


def check_kind(kind: str) -> str:
  if kind not in KINDS:
    raise UserError(f'Unknown dataset {kind!r}: choose one of {", ".join(KINDS)}.')
  return kind


def dataset_classes(kind: str, root: str | Path | None = None) -> folder.ClassSet:
  """The classes of a dataset kind: a preset, or ``root/classes.txt`` for 'folder'."""
  if check_kind(kind) != 'folder':
    return _PRESET_CLASSES[kind]
  if root is None:
    raise UserError('A folder dataset needs its root (with classes.txt) to know its classes.')
  return folder.read_classes_file(Path(root).expanduser() / folder.CLASSES_FILE)


def open_split(info: DatasetInfo, root: str | Path, split: str):
  """A random-access source of ``split`` of the dataset ``info`` describes, under ``root``.

  For 'folder', ``info.classes`` is used (the dataset's classes.txt is not needed).
  """
  root = Path(root).expanduser()
  kind = check_kind(info.kind)
  if kind == 'cityscapes':
    return cityscapes.CityscapesFolder(root, split)
  if kind == 'voc':
    return folder.PascalVocFolder(root, split)
  if kind == 'ade20k':
    return folder.Ade20kFolder(root, split)
  layout = info.layout
  return folder.SegmentationFolder(
      root, split, info.classes, image_dir=layout.image_dir, mask_dir=layout.mask_dir,
      mask_suffix=layout.mask_suffix, ignore_index=layout.ignore_index,
      reduce_zero_label=layout.reduce_zero_label, label_map=layout.label_map_dict())
