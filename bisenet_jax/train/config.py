"""The training recipe as an ml_collections ConfigDict: the reference, and the embedded demo.

``configs/r18.py`` and ``configs/r50.py`` only pick the architecture; every key is declared
here, so a typo in ``--config.some_key=...`` fails instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections

from bisenet_jax.errors import UserError

# sssegmentation: 186 iterations per epoch (2975 images padded to 2976, batch 16) x 860 epochs.
ITERS_PER_EPOCH = 186
EPOCHS = 860


def reference_config(arch: str) -> ml_collections.ConfigDict:
  """REFERENCE.md §4-5: batch 16, crop 1024x1024, SGD 0.05 poly, 159,960 steps, SyncBN."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      name=arch,
      num_classes=19,  # 0: the dataset's (classes.txt for source 'folder').
      dropout_rate=0.1, stem='deep',
      dtype='float32'))  # 'float32' | 'bfloat16' (compute) | 'float64' (exactness checks)

  config.data = ml_collections.ConfigDict()
  # 'cityscapes' | 'tfds' | 'synthetic' (Cityscapes), 'folder' (any labelled image set),
  # 'voc' (Pascal VOC 2012), 'ade20k' (ADEChallengeData2016).
  config.data.source = 'cityscapes'
  config.data.root = ''  # The dataset's root, or the synthetic cache folder.
  config.data.tfds_data_dir = ''  # TFDS data_dir for source='tfds' ('' = TFDS's default).
  config.data.train_split = 'train'
  config.data.val_split = 'val'
  # source='folder' only (bisenet_jax.data.sources.FolderLayout): where the files are and how
  # mask values become classes.
  config.data.image_dir = 'images/{split}'
  config.data.mask_dir = 'masks/{split}'
  config.data.mask_suffix = '.png'
  config.data.ignore_index = 255  # The mask value of ignored pixels.
  config.data.reduce_zero_label = False  # Mask value 0 ignored, v -> class v - 1.
  config.data.label_map = ''  # 'value:class,...' when mask values are not class indices.
  config.data.base_size = (2048, 1024)  # (width, height) of the Resize target at scale 1.
  config.data.crop_size = (1024, 1024)  # (height, width) of the training crop.
  config.data.scale_range = (0.5, 2.0)
  config.data.worker_count = 2  # grain worker processes for the train transforms (0 = threads).
  config.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=200, num_val=50, height=256, width=512, seed=0))

  config.batch_size = 16  # Global, over every device and process.
  config.total_steps = ITERS_PER_EPOCH * EPOCHS
  config.optimizer = ml_collections.ConfigDict(dict(
      base_lr=0.05, min_lr=1e-4, power=0.9, warmup_steps=1000, warmup_ratio=0.1,
      momentum=0.9, weight_decay=5e-4))

  config.log_every_steps = 50
  config.checkpoint_every_steps = ITERS_PER_EPOCH
  config.keep_checkpoints = 3
  config.eval_every_steps = 10 * ITERS_PER_EPOCH
  config.eval_batch_per_device = 1

  config.init = ml_collections.ConfigDict(dict(
      backbone='',  # ImageNet ResNet .pth (OpenMMLab v1c, or torchvision with model.stem='classic').
      checkpoint='',  # A full model to fine-tune from (official .pth or a model checkpoint).
  ))
  return config


def demo_config(arch: str) -> ml_collections.ConfigDict:
  """The embedded default: synthetic street scenes, small crops, a few minutes on a laptop CPU."""
  config = reference_config(arch)
  config.data.source = 'synthetic'
  config.data.root = '~/.cache/bisenet_jax'
  config.data.base_size = (512, 256)
  config.data.crop_size = (256, 256)
  config.data.scale_range = (0.75, 1.5)
  config.data.worker_count = 0
  config.batch_size = 8
  config.total_steps = 120
  config.optimizer.warmup_steps = 10
  config.log_every_steps = 10
  config.checkpoint_every_steps = 40
  config.eval_every_steps = 60
  config.eval_batch_per_device = 4
  return config


def small_data_config(arch: str) -> ml_collections.ConfigDict:
  """A recipe for a few hundred to a few thousand labelled images of any size (source 'folder').

  Frames are resized to fit 1024x512 (scale 0.5-2.0) and cropped to 512x512, as mmsegmentation
  does for such datasets; batch 8 (one GPU), SGD lr 0.01 with 200 warm-up steps, 8,000 steps.
  """
  config = reference_config(arch)
  config.model.num_classes = 0
  config.data.source = 'folder'
  config.data.base_size = (1024, 512)
  config.data.crop_size = (512, 512)
  config.batch_size = 8
  config.total_steps = 8000
  config.optimizer.base_lr = 0.01
  config.optimizer.warmup_steps = 200
  config.log_every_steps = 20
  config.checkpoint_every_steps = 500
  config.eval_every_steps = 1000
  return config


def garden_config(arch: str) -> ml_collections.ConfigDict:
  """The worked example of docs/custom_data.md: the synthetic garden set, minutes on a CPU."""
  config = small_data_config(arch)
  config.data.base_size = (256, 192)
  config.data.crop_size = (192, 192)
  config.data.scale_range = (0.75, 1.5)
  config.data.worker_count = 0
  config.total_steps = 120
  config.optimizer.base_lr = 0.05
  config.optimizer.warmup_steps = 10
  config.log_every_steps = 10
  config.checkpoint_every_steps = 40
  config.eval_every_steps = 60
  config.eval_batch_per_device = 4
  return config


def mmseg_512_config(arch: str, source: str, num_classes: int,
                     total_steps: int) -> ml_collections.ConfigDict:
  """mmsegmentation's 512x512 recipe (Pascal VOC, ADE20K): frames resized to fit 2048x512,
  scale 0.5-2.0, 512x512 crops, batch 16, SGD lr 0.01 poly."""
  config = reference_config(arch)
  config.model.num_classes = num_classes
  config.data.source = source
  config.data.base_size = (2048, 512)
  config.data.crop_size = (512, 512)
  config.total_steps = total_steps
  config.optimizer.base_lr = 0.01
  config.checkpoint_every_steps = 1000
  config.eval_every_steps = 4000
  return config


CITYSCAPES_VARIANTS = {'': reference_config, 'demo': demo_config}


def get_config(arch: str, arg: str | None = None,
               variants=CITYSCAPES_VARIANTS) -> ml_collections.ConfigDict:
  """The config of ``arch`` for the variant ``arg`` ('' = the default recipe), locked."""
  variant = arg or ''
  if variant not in variants:
    choices = ', '.join(repr(v) for v in variants)
    raise UserError(f'Unknown config variant {variant!r}; use one of {choices} '
                    "(e.g. --config configs/r18.py:demo; '' is the file alone).")
  config = variants[variant](arch)
  config.lock()
  return config
