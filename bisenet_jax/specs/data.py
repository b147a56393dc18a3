"""What a dataset is (``DatasetSpec``, recorded in every checkpoint and exported file) and where
training reads it (``DataSpec``).

A dataset is a *kind* with its classes, its folder layout and the size its recipe resizes test
images to fit:

* ``cityscapes``: the official folder layout (also the TFDS copy and the synthetic demo);
* ``folder``: any labelled image set (images, masks and ``classes.txt``), with the folder names,
  mask suffix and mask-value mapping of ``FolderLayout``;
* ``voc``: Pascal VOC 2012; ``ade20k``: ADE20K (ADEChallengeData2016).
"""

from __future__ import annotations

import dataclasses

from bisenet_jax.errors import UserError
from bisenet_jax.specs.classes import ClassSet
from bisenet_jax.specs.sizes import Size

KINDS = ('cityscapes', 'folder', 'voc', 'ade20k')
# Where training reads each kind from: 'tfds' and 'synthetic' are Cityscapes too.
SOURCE_KINDS = {'cityscapes': 'cityscapes', 'tfds': 'cityscapes', 'synthetic': 'cityscapes',
                'folder': 'folder', 'voc': 'voc', 'ade20k': 'ade20k'}
# The (height, width) each kind's recipe resizes test images to fit (configs/): Cityscapes'
# full frames, mmsegmentation's 512x2048 for VOC and ADE20K, configs/custom.py's for folders.
RESIZE_TO = {'cityscapes': (1024, 2048), 'folder': (512, 1024), 'voc': (512, 2048),
             'ade20k': (512, 2048)}


def _field(default, help_text):
  return dataclasses.field(default=default, metadata={'help': help_text})


@dataclasses.dataclass(frozen=True)
class FolderLayout:
  """Where a ``folder`` dataset keeps its files and how its mask values become classes.

  The one declaration of these options: the training config's ``data.*`` keys and the
  ``--image-dir``-style flags of ``evaluate`` are generated from these fields.
  """
  image_dir: str = _field('images/{split}',
                          "images' folder below the root; '{split}' is replaced by the split")
  mask_dir: str = _field('masks/{split}', "masks' folder below the root, likewise")
  mask_suffix: str = _field('.png', "masks' file-name ending")
  ignore_index: int = _field(255, 'the mask value of ignored pixels')
  reduce_zero_label: bool = _field(False, 'mask value 0 is ignored and v is class v - 1 '
                                   '(as ADE20K)')
  label_map: str = _field('', "'value:class,...' when mask values are not the class indices; a "
                          'class of 255 ignores the value, every other value is refused')

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


LAYOUT_FIELDS = tuple(field.name for field in dataclasses.fields(FolderLayout))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A model's dataset: kind, classes, folder layout and the test resize target.

  Attributes:
    kind: one of ``KINDS``.
    classes: the ClassSet the model predicts.
    layout: the folder layout (used by kind 'folder' only).
    resize_to: (height, width) that test images are resized to fit, keeping their aspect ratio
      (only the long and the short side matter): the reference's test Resize.
  """
  kind: str
  classes: ClassSet
  layout: FolderLayout = FolderLayout()
  resize_to: Size = (1024, 2048)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise UserError(f'Unknown dataset {self.kind!r}: choose one of {", ".join(KINDS)}.')

  def to_json(self) -> dict:
    return {'kind': self.kind, 'classes': self.classes.to_json(),
            'layout': dataclasses.asdict(self.layout), 'resize_to': list(self.resize_to)}

  @classmethod
  def from_json(cls, data: dict) -> DatasetSpec:
    """The inverse of ``to_json``; also reads files written before sizes were (height, width),
    which stored the target as ``base_size``, (width, height)."""
    resize_to = data['resize_to'] if 'resize_to' in data else data['base_size'][::-1]
    return cls(data['kind'], ClassSet.from_json(data['classes']), FolderLayout(**data['layout']),
               tuple(resize_to))


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What training reads: the dataset, where it is, and the training crops.

  Attributes:
    dataset: the DatasetSpec that checkpoints record.
    source: how the files are read: 'cityscapes' (folder), 'tfds', 'synthetic' (the demo's
      generated scenes), 'folder', 'voc' or 'ade20k'.
    root: the dataset root, or the synthetic data's cache folder ('' for TFDS).
    train_split, val_split: the splits to train and evaluate on.
    crop_size: (height, width) of the training crops.
    scale_range: (low, high) of the random scale applied to ``dataset.resize_to``.
    worker_count: grain worker processes for the training transforms (0 = threads).
    threads: reader threads per process (0 = one per CPU core the process may use).
    tfds_data_dir: TFDS's data_dir for source 'tfds' ('' = TFDS's default).
    synthetic: the generator's parameters for source 'synthetic' (num_train, num_val, height,
      width, seed).
    records: the folder of decoded-frame records both splits are read through
      (``data.records``), or None to decode the files at every read.
  """
  dataset: DatasetSpec
  source: str
  root: str
  train_split: str = 'train'
  val_split: str = 'val'
  crop_size: Size = (1024, 1024)
  scale_range: tuple[float, float] = (0.5, 2.0)
  worker_count: int = 0
  threads: int = 0
  tfds_data_dir: str = ''
  synthetic: dict = dataclasses.field(default_factory=dict)
  records: str | None = None
