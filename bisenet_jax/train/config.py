"""The training recipe as an ml_collections ConfigDict, and the edge that turns it into a
``specs.TrainSpec``.

``configs/*.py`` pick a recipe and an architecture; every key is declared here, so a typo in
``--config.some_key=...`` fails instead of being silently ignored. Sizes are (height, width).
``train_spec`` is the one place a config is read: it checks every value and returns the frozen
spec the training loop runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from bisenet_jax.data import sources
from bisenet_jax.errors import UserError
from bisenet_jax.interop import pretrained
from bisenet_jax.specs import (HEAD_NAMES, LAYOUT_FIELDS, PRECISIONS, SOURCE_KINDS, DataSpec,
                               FolderLayout, LossScaleSpec, ModelSpec, ObjectiveSpec,
                               OptimizerSpec, TrainSpec, check_size, network)
from bisenet_jax.specs.model import NETWORKS, imagenet_files

CITYSCAPES_TRAIN_IMAGES = 2975


def iterations_per_epoch(batch_size: int) -> int:
  """sssegmentation's iterations per epoch on Cityscapes train: each process's sampler pads the
  2975 images to a multiple of the process count and drops its last incomplete batch; with 2-16
  GPUs that is 186 for batch 16 and 93 for batch 32 (docs/reference.md §4.1)."""
  return -(-CITYSCAPES_TRAIN_IMAGES // 16) * 16 // batch_size


# sssegmentation: 186 iterations per epoch (2975 images padded to 2976, batch 16) x 860 epochs.
ITERS_PER_EPOCH = iterations_per_epoch(16)
EPOCHS = 860


# Keys that changed meaning or name: giving one is an error that shows the new spelling.
RENAMED_KEYS = {'data.base_size': 'data.resize_to=(HEIGHT,WIDTH), e.g. '
                                  '--config.data.resize_to=(1024,2048)'}


def reference_config(arch: str) -> ml_collections.ConfigDict:
  """docs/reference.md §4-5: batch 16, crop 1024x1024, SGD 0.05 poly, 159,960 steps, SyncBN.

  The Cityscapes recipe of BiSeNetV1 and BiSeNetV2 (the same one, §10.3); ``configs/*.py`` patch
  it for other networks and datasets. ``arch`` names the network (``specs.NETWORKS``).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict(dict(
      name=arch,
      num_classes=19,  # 0: the dataset's (classes.txt for source 'folder').
      dropout_rate=0.1,
      # BiSeNetV1's ResNet stem: None = 'deep' (v1c, official), or 'classic' (7x7, torchvision).
      stem=config_dict.placeholder(str),
      dtype='float32'))  # 'float32' | 'bfloat16' (compute) | 'float64' (exactness checks)
  # float32 convolutions and matmuls in training and in its evaluations: 'highest' (full
  # float32, the reference's: TF32 off) | 'tensorfloat32' | 'bfloat16' (one pass) | 'default'
  # (the backend's: TF32 on NVIDIA GPUs since Ampere, one bfloat16 pass on TPUs). Faster on
  # GPUs and TPUs, not the reference's arithmetic (docs/benchmarks.md); no effect on CPUs.
  config.precision = 'highest'

  config.data = ml_collections.ConfigDict()
  # 'cityscapes' | 'tfds' | 'synthetic' (Cityscapes), 'folder' (any labelled image set),
  # 'voc' (Pascal VOC 2012), 'ade20k' (ADEChallengeData2016).
  config.data.source = 'cityscapes'
  config.data.root = ''  # The dataset's root, or the synthetic cache folder.
  config.data.tfds_data_dir = ''  # TFDS data_dir for source='tfds' ('' = TFDS's default).
  config.data.train_split = 'train'
  config.data.val_split = 'val'
  # source='folder' only: where the files are and how mask values become classes, the fields
  # of specs.FolderLayout (image_dir, mask_dir, mask_suffix, ignore_index, reduce_zero_label,
  # label_map) with their defaults.
  config.data.update(dataclasses.asdict(FolderLayout()))
  # (height, width) the images are resized to fit, keeping their aspect ratio, before the
  # random scale (training) or as they are (evaluation).
  config.data.resize_to = (1024, 2048)
  config.data.crop_size = (1024, 1024)  # (height, width) of the training crop.
  config.data.scale_range = (0.5, 2.0)
  # Where the train transforms run: `threads` reader threads in each process (0: one per CPU
  # core this process may use), and with worker_count > 0 in that many grain worker processes
  # instead. Threads cost less CPU per image (docs/benchmarks.md, "Feeding an accelerator"): the
  # transforms' pixel loops release the GIL.
  config.data.worker_count = 0
  config.data.threads = 0
  # Decoded-frame records (data/records.py): each frame of both splits is decoded once into raw
  # arrays under this folder and read from there ('' = $BISENET_JAX_CACHE/records, else
  # ~/.cache/bisenet_jax/records); 'none' decodes the files at every read.
  config.data.records = ''
  config.data.synthetic = ml_collections.ConfigDict(dict(
      num_train=200, num_val=50, height=256, width=512, seed=0))

  config.batch_size = 16  # Global, over every device and process.
  # Images per replica of the reference's DistributedDataParallel run (2 on each of 8 GPUs):
  # every loss is the mean over each group of this many consecutive images of a forward pass,
  # averaged over the groups, as DDP averages the GPUs' losses (docs/reference.md §4.4). The
  # batch_size / accumulate_steps images of a forward pass must split into such groups.
  config.batch_per_replica = 2
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
      # The ResNet's ImageNet start: by default the network's official file for its stem
      # (OpenMMLab v1c; torchvision with model.stem='classic'), downloaded once into
      # ~/.cache/bisenet_jax/imagenet ($BISENET_JAX_CACHE/imagenet), and 'none' for networks
      # the reference trains from scratch; it follows model.name and model.stem until set.
      # Or a .pth path, or 'none' (from scratch on purpose).
      backbone=official_backbone(config.model),
      checkpoint='',  # A full model to fine-tune from (official .pth or a model checkpoint).
  ))

  # sssegmentation's training options (docs/reference.md §9), all off by default: the recipe
  # above is the reference's, bit for bit.
  # Each head's losses, summed: a tuple of {'type': 'CrossEntropyLoss' | 'DiceLoss' | 'FocalLoss'
  # | 'LovaszLoss', **the toolbox's arguments}, e.g.
  # --config.losses.loss_cls="({'type': 'CrossEntropyLoss', 'class_weight': (1.0, 4.0)},)".
  # None: the network's reference losses (specs.NETWORKS); only its own heads may be set.
  config.losses = ml_collections.ConfigDict(
      {head: config_dict.placeholder(tuple) for head in HEAD_NAMES})
  # OHEM pixel sampling on every head, on when thresh is set (the toolbox's 0.7 is common).
  config.ohem = ml_collections.ConfigDict(dict(
      thresh=config_dict.placeholder(float), min_kept_per_image=100_000))
  # An exponential moving average of the variables, on when momentum is set (the toolbox's
  # 0.0005: the weight of the new value); evaluate, predict and export then use it.
  config.ema = ml_collections.ConfigDict(dict(momentum=config_dict.placeholder(float)))
  # Micro-batches per optimizer step; batch_size is their total. BatchNorm statistics are then
  # per micro-batch, so this is not the same as one larger batch.
  config.accumulate_steps = 1
  # model.dtype='float16': dynamic loss scaling, with PyTorch GradScaler's defaults; that many
  # skipped steps in a row (max_consecutive_skips) stop the run.
  config.loss_scale = ml_collections.ConfigDict(dataclasses.asdict(LossScaleSpec()))
  return config


def _official_backbone_file(name: str, model: ml_collections.ConfigDict) -> str:
  entry = NETWORKS.get(name)
  return (entry.imagenet_file(model.stem) if entry else None) or 'none'


def official_backbone(model: ml_collections.ConfigDict) -> config_dict.FieldReference:
  """``init.backbone``'s default: the official ImageNet file of ``model.name`` with
  ``model.stem`` ('none' if it trains from scratch), computed when read, so that
  ``--config.model.name=...`` alone moves it along; setting ``init.backbone`` replaces it."""
  # FieldReference's lazy operation (what its public + and * build), with our function; it
  # reads model.stem from the ConfigDict itself (an operation with a None argument is skipped).
  return model.get_ref('name')._apply_op(_official_backbone_file, model)


def demo_config(arch: str, recipe=reference_config) -> ml_collections.ConfigDict:
  """The embedded default: synthetic street scenes, small crops, a few minutes on a laptop CPU.

  ``recipe``: the network's Cityscapes recipe (``configs/*.py``) the demo shrinks; its
  optimizer stays, with the warm-up (if any) shortened to 10 steps.
  """
  config = recipe(arch)
  config.data.source = 'synthetic'
  config.data.root = '~/.cache/bisenet_jax'
  config.data.resize_to = (256, 512)
  config.data.crop_size = (256, 256)
  config.data.scale_range = (0.75, 1.5)
  config.data.worker_count = 0
  config.batch_size = 8
  config.total_steps = 120
  config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, 10)
  config.log_every_steps = 10
  config.checkpoint_every_steps = 40
  config.eval_every_steps = 60
  config.eval_batch_per_device = 4
  config.init.backbone = 'none'  # Offline and quick: from scratch.
  return config


def small_data_config(arch: str) -> ml_collections.ConfigDict:
  """A recipe for a few hundred to a few thousand labelled images of any size (source 'folder').

  Frames are resized to fit 512x1024 (scale 0.5-2.0) and cropped to 512x512, as mmsegmentation
  does for such datasets; batch 8 (one GPU), SGD lr 0.01 with 200 warm-up steps, 8,000 steps.
  """
  config = reference_config(arch)
  config.model.num_classes = 0
  config.data.source = 'folder'
  config.data.resize_to = (512, 1024)
  config.data.crop_size = (512, 512)
  config.batch_size = 8
  config.batch_per_replica = 8  # One GPU.
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
  config.data.resize_to = (192, 256)
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
  config.init.backbone = 'none'  # Offline and quick: from scratch.
  return config


def mmseg_512_config(arch: str, source: str, num_classes: int,
                     total_steps: int) -> ml_collections.ConfigDict:
  """mmsegmentation's 512x512 recipe (Pascal VOC, ADE20K): frames resized to fit 512x2048,
  scale 0.5-2.0, 512x512 crops, batch 16, SGD lr 0.01 poly."""
  config = reference_config(arch)
  config.model.num_classes = num_classes
  config.data.source = source
  config.data.resize_to = (512, 2048)
  config.data.crop_size = (512, 512)
  config.batch_per_replica = 4  # mmsegmentation's 4 GPUs x 4 images.
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


def load_config_file(text: str) -> ml_collections.ConfigDict:
  """The config of ``--config FILE[:VARIANT]``, as ``ml_collections.config_flags`` loads it."""
  path, _, variant = text.partition(':')
  try:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except (OSError, AttributeError):  # A missing file, or one that is no Python module.
    raise UserError(f'cannot load the config file {path!r}: give an existing file, e.g. '
                    '--config configs/r18.py:demo') from None
  return module.get_config(variant or None)


def check_override_keys(config: ml_collections.ConfigDict, keys: list[str]) -> None:
  """Every ``--config.KEY`` must name a key of ``config``; renamed keys show their new name."""
  known = _dotted_keys(config.to_dict())
  for key in keys:
    if key in RENAMED_KEYS:
      raise UserError(f'config.{key} is gone: use --config.{RENAMED_KEYS[key]}')
    if key not in known and not any(k.startswith(f'{key}.') for k in known):
      close = difflib.get_close_matches(key, sorted(known), n=1)
      hint = f'. Did you mean "{close[0]}"?' if close else ''
      raise UserError(f'the config has no key {key!r}{hint}')


def _dotted_keys(tree: dict, prefix: str = '') -> set[str]:
  keys = set()
  for name, value in tree.items():
    keys.add(prefix + name)
    if isinstance(value, dict):
      keys |= _dotted_keys(value, f'{prefix}{name}.')
  return keys


def train_spec(config: ml_collections.ConfigDict) -> TrainSpec:
  """Checks ``config`` and returns the run it describes (the dataset's classes resolved).

  Raises:
    UserError: a value is out of range, the data source or its root is missing, or the class
      count disagrees with the dataset's.
  """
  for key in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
              'keep_checkpoints', 'eval_batch_per_device', 'batch_size', 'batch_per_replica'):
    if config[key] <= 0:
      raise UserError(f'config.{key} must be positive, got {config[key]}.')
  if config.accumulate_steps < 1 or config.batch_size % config.accumulate_steps:
    raise UserError(f'config.accumulate_steps={config.accumulate_steps} must be a positive '
                    f'divisor of config.batch_size={config.batch_size} (the images of one '
                    'optimizer step, split into that many micro-batches).')
  forward_batch = config.batch_size // config.accumulate_steps
  if forward_batch % config.batch_per_replica:
    raise UserError(f'config.batch_per_replica={config.batch_per_replica} does not divide the '
                    f'{forward_batch} images of a forward pass (config.batch_size / '
                    'config.accumulate_steps): set it to a divisor, e.g. '
                    f'--config.batch_per_replica={math.gcd(forward_batch, config.batch_per_replica)}'
                    '.')
  momentum = config.ema.momentum
  if momentum is not None and not 0 < momentum <= 1:
    raise UserError(f'config.ema.momentum={momentum} must be in (0, 1], the weight of the new '
                    "value (the toolbox's 0.0005), or None for no EMA.")
  if config.precision not in PRECISIONS:
    raise UserError(f'config.precision={config.precision!r} is not one of '
                    f'{", ".join(PRECISIONS)} (\'highest\': full float32, as the reference).')
  loss_scale = loss_scale_spec(config.loss_scale) if config.model.dtype == 'float16' else None
  data = data_spec(config.data)
  model = model_spec(config.model, data)
  init_backbone = backbone_spec(config.init, model)
  return TrainSpec(
      data=data, model=model, seed=config.seed,
      optimizer=OptimizerSpec(**config.optimizer.to_dict()), batch_size=config.batch_size,
      total_steps=config.total_steps, log_every_steps=config.log_every_steps,
      checkpoint_every_steps=config.checkpoint_every_steps,
      eval_every_steps=config.eval_every_steps, keep_checkpoints=config.keep_checkpoints,
      eval_batch_per_device=config.eval_batch_per_device,
      init_checkpoint=config.init.checkpoint, init_backbone=init_backbone,
      objective=objective_spec(config, model), ema_momentum=momentum,
      accumulate_steps=config.accumulate_steps,
      loss_scale=loss_scale, precision=config.precision)


def backbone_spec(init: ml_collections.ConfigDict, model: ModelSpec) -> str:
  """``config.init.backbone`` checked, without touching the network: '' (no ImageNet file), an
  existing file, or the official ImageNet file name of ``model``'s network and stem.

  With ``init.checkpoint`` (the whole model) the default file is not needed: '' then.
  """
  value = init.backbone or ''
  default = model.network.imagenet_file(model.stem)
  if init.checkpoint:
    if pretrained.from_scratch(value) or value == default:
      return ''
    raise UserError('Set only one of config.init.checkpoint and config.init.backbone (the '
                    'checkpoint holds the whole model): drop --config.init.backbone.')
  if pretrained.from_scratch(value):
    return ''
  if model.network.imagenet_backbone is None:
    raise UserError(f'config.init.backbone={value!r}, but {model.name} has no ImageNet backbone '
                    '(the reference trains it from scratch): set --config.init.backbone=none.')
  pretrained.check(value)
  if value != default and value in imagenet_files() and not Path(value).expanduser().is_file():
    raise UserError(f'config.init.backbone={value} is the ImageNet file of another network or '
                    f'stem: {model.name} with the {model.stem} stem starts from {default}.')
  return value


# config.loss_scale's checks: each returns None when the value can train, else what to write.
_LOSS_SCALE_CHECKS = {
    'init_scale': lambda v: None if 0 < v < math.inf else
    "a positive number (GradScaler's 65536.0; at 0 every step is skipped)",
    'growth_factor': lambda v: None if 1 < v < math.inf else
    "a number above 1 (GradScaler's 2.0)",
    'backoff_factor': lambda v: None if 0 < v < 1 else
    "a number in (0, 1) (GradScaler's 0.5)",
    'growth_interval': lambda v: None if _is_int(v) and v >= 1 else
    "a whole number of steps, at least 1 (GradScaler's 2000)",
    'max_consecutive_skips': lambda v: None if _is_int(v) and v >= 1 else
    'a whole number of steps, at least 1 (100 by default)',
}


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def loss_scale_spec(loss_scale: ml_collections.ConfigDict) -> LossScaleSpec:
  """``config.loss_scale`` checked: values with which float16 training can take a step."""
  for key, check in _LOSS_SCALE_CHECKS.items():
    problem = check(loss_scale[key])
    if problem:
      raise UserError(f'config.loss_scale.{key}={loss_scale[key]!r} cannot train: write '
                      f'{problem}.')
  return LossScaleSpec(**loss_scale.to_dict())


def objective_spec(config: ml_collections.ConfigDict, model: ModelSpec) -> ObjectiveSpec:
  """``config.losses`` and ``config.ohem``, checked (names, arguments, class weights' length);
  a head left None gets the network's reference losses."""
  from bisenet_jax.train import loss_functions  # Imports JAX: only for this check.
  sampler = None
  if config.ohem.thresh is not None:
    sampler = {'type': 'OHEMPixelSampler', 'thresh': config.ohem.thresh,
               'min_kept_per_image': config.ohem.min_kept_per_image}
  heads = model.network.head_names
  foreign = [head for head in HEAD_NAMES if head not in heads and config.losses[head] is not None]
  if foreign:
    raise UserError(f'config.losses.{foreign[0]} is set, but {model.name} has the heads '
                    f'{", ".join(heads)}: set the losses of those.')
  losses = []
  for head, reference in model.network.heads:
    entries = config.losses[head]
    if entries is None:
      entries = reference
    entries = (entries,) if isinstance(entries, Mapping) else entries
    if not isinstance(entries, (tuple, list)) or not all(isinstance(e, Mapping) for e in entries):
      raise UserError(f'config.losses.{head}={entries!r} is not a tuple of loss dicts: write e.g. '
                      f"--config.losses.{head}=\"({{'type': 'CrossEntropyLoss'}},)\" (Python "
                      'literals only)')
    entries = tuple(dict(entry) for entry in entries)
    loss_functions.check_head_losses(entries, model.num_classes, sampler=sampler,
                                     name=f'config.losses.{head}')
    losses.append((head, entries))
  replicas = config.batch_size // config.accumulate_steps // config.batch_per_replica
  return ObjectiveSpec(tuple(losses), sampler, replicas)


def data_spec(data: ml_collections.ConfigDict) -> DataSpec:
  """``config.data`` as a DataSpec; a folder dataset's classes come from its classes.txt."""
  if data.source not in SOURCE_KINDS:
    raise UserError(f'config.data.source must be one of {", ".join(SOURCE_KINDS)}, got '
                    f'{data.source!r}.')
  kind = SOURCE_KINDS[data.source]
  if kind != 'cityscapes' and not data.root:
    raise UserError(f'config.data.root is empty: pass --config.data.root=/path/to/the/dataset '
                    f"(source '{data.source}').")
  if data.source == 'cityscapes' and not data.root:
    raise UserError('config.data.root is empty: pass --config.data.root=/path/to/cityscapes '
                    '(with leftImg8bit/ and gtFine/), or try --config configs/r18.py:demo.')
  dataset = sources.resolve_dataset(
      kind, root=data.root or None, layout={name: data[name] for name in LAYOUT_FIELDS},
      resize_to=check_size(data.resize_to, 'config.data.resize_to'))
  for key in ('worker_count', 'threads'):
    if not _is_int(data[key]) or data[key] < 0:
      raise UserError(f'config.data.{key}={data[key]!r}: give a whole number, 0 or more')
  return DataSpec(dataset, data.source, data.root, data.train_split, data.val_split,
                  crop_size=check_size(data.crop_size, 'config.data.crop_size'),
                  scale_range=tuple(data.scale_range), worker_count=data.worker_count,
                  threads=data.threads,
                  tfds_data_dir=data.tfds_data_dir, synthetic=data.synthetic.to_dict(),
                  records=records_dir(data.records))


def records_dir(value: str) -> str | None:
  """``config.data.records`` as a folder: '' the cache's (``$BISENET_JAX_CACHE/records``, else
  ``~/.cache/bisenet_jax/records``), 'none' None (the files are decoded at every read)."""
  value = (value or '').strip()
  if value.lower() == 'none':
    return None
  folder = Path(value).expanduser() if value else pretrained.cache_root() / 'records'
  return str(folder.absolute())


def model_spec(model: ml_collections.ConfigDict, data: DataSpec) -> ModelSpec:
  """``config.model`` as a ModelSpec; ``num_classes`` 0 follows the dataset, another value must
  agree with it."""
  count = data.dataset.classes.num_classes
  if model.num_classes not in (0, count):
    where = (f'{Path(data.root) / "classes.txt"} lists' if data.dataset.kind == 'folder'
             else f'{data.dataset.kind} has')
    raise UserError(f'config.model.num_classes={model.num_classes} but {where} {count} '
                    f'classes: set --config.model.num_classes={count}, or 0 to follow the data.')
  network(model.name)  # One line naming the known networks, before anything else is said.
  return ModelSpec(model.name, count, model.stem, model.dropout_rate, model.dtype)
