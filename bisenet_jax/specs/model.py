"""Which model: the registry of networks, and a ``ModelSpec`` naming one with its class count,
stem, dropout and compute precision.

``NETWORKS`` is the one description of each network (docs/architecture.md, "Adding a network"):
its Flax segmentor and widths, its heads with the reference's losses, its official checkpoint
and recipe. Commands ask it, never a network's name. It imports nothing heavy: ``models.build``
imports the segmentor it names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from bisenet_jax.errors import UserError

CROSS_ENTROPY = {'type': 'CrossEntropyLoss'}
# Where sssegmentation's ResNet backbone downloads its ImageNet weights (its DEFAULT_MODEL_URLS,
# docs/reference.md §3): OpenMMLab's v1c files for the deep stem, torchvision's for the 7x7 one.
OPENMMLAB_PRETRAIN = 'https://download.openmmlab.com/pretrain/third_party'
TORCHVISION_MODELS = 'https://download.pytorch.org/models'


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
  """One network of the family, as every command sees it.

  Attributes:
    title: how people name it, e.g. 'FCN + BiSeNetV2'.
    module: ``'package.module:Class'`` of its Flax segmentor (a ``models.Segmentor``).
    options: keyword arguments of that class that make this variant (its widths).
    heads: ``(loss name, the reference's losses)`` per head, in the order the segmentor returns
      their logits in training (the main head first); each loss a dict as in
      ``specs.ObjectiveSpec``, ignored pixels 255 (docs/reference.md §4.4).
    stems: the ResNet stems it can be built with, the official one first; () if it has none.
    imagenet_backbone: the path of its ResNet in the variable tree, where an ImageNet file's
      weights go (``config.init.backbone``); None if it starts from scratch.
    imagenet_urls: per stem, the official address of the ImageNet ResNet file the reference
      starts that backbone from (its file name is the address's last part); empty if it
      starts from scratch. ``config.init.backbone`` names it by default.
    official_file: the reference's Cityscapes checkpoint, and ``reference_miou`` its val mIoU.
    config: the config file with its reference recipe.
  """
  title: str
  module: str
  heads: tuple[tuple[str, tuple[Mapping[str, Any], ...]], ...]
  official_file: str
  reference_miou: float
  config: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  stems: tuple[str, ...] = ()
  imagenet_backbone: tuple[str, ...] | None = None
  imagenet_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def head_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.heads)

  def imagenet_file(self, stem: str | None = None) -> str | None:
    """The name of the official ImageNet file for ``stem`` (None: the official stem), or None
    for a network (or stem) that starts from scratch."""
    url = self.imagenet_urls.get(stem or (self.stems[0] if self.stems else None))
    return url.rsplit('/', 1)[-1] if url else None


def _bisenetv1(depth: int, spatial, context, head: int, aux: int, file: str, miou: float,
               config: str, imagenet_urls: Mapping[str, str]) -> Network:
  """docs/reference.md §1: the two BiSeNetV1 variants differ only in widths."""
  return Network(
      f'FCN + BiSeNetV1 (ResNet-{depth})', 'bisenet_jax.models.bisenetv1:FCNBiSeNetV1',
      heads=tuple((name, (CROSS_ENTROPY,)) for name in ('loss_cls', 'loss_aux1', 'loss_aux2')),
      official_file=file, reference_miou=miou, config=config,
      options=dict(depth=depth, spatial_channels=spatial, context_channels=context,
                   head_channels=head, aux_channels=aux),
      stems=('deep', 'classic'), imagenet_backbone=('backbone_net', 'context_path',
                                                    'backbone_net'),
      imagenet_urls=imagenet_urls)


_SIGMOID_CROSS_ENTROPY = {'type': 'CrossEntropyLoss', 'use_sigmoid': True}

NETWORKS = {
    'bisenetv1_r18': _bisenetv1(18, (64, 64, 64, 128), (128, 256, 512), 256, 64,
                                'fcn_bisenetv1_resnet18os32_cityscapes.pth', 75.76,
                                'configs/r18.py',
                                {'deep': f'{OPENMMLAB_PRETRAIN}/resnet18_v1c-b5776b93.pth',
                                 'classic': f'{TORCHVISION_MODELS}/resnet18-5c106cde.pth'}),
    'bisenetv1_r50': _bisenetv1(50, (256, 256, 256, 512), (512, 1024, 2048), 1024, 256,
                                'fcn_bisenetv1_resnet50os32_cityscapes.pth', 77.78,
                                'configs/r50.py',
                                {'deep': f'{OPENMMLAB_PRETRAIN}/resnet50_v1c-2cccc1ad.pth',
                                 'classic': f'{TORCHVISION_MODELS}/resnet50-19c8e357.pth'}),
    # docs/reference.md §10: the main head and four auxiliary heads, plain cross-entropy each.
    'bisenetv2': Network(
        'FCN + BiSeNetV2', 'bisenet_jax.models.bisenetv2:FCNBiSeNetV2',
        heads=tuple((name, (CROSS_ENTROPY,)) for name in
                    ('loss_cls', 'loss_aux1', 'loss_aux2', 'loss_aux3', 'loss_aux4')),
        official_file='fcn_bisenetv2_cityscapes.pth', reference_miou=74.62,
        config='configs/bisenetv2.py'),
    # docs/reference.md §11: sigmoid (per-class binary) cross-entropy, auxiliary heads x0.4.
    'fastscnn': Network(
        'DepthwiseSeparableFCN + Fast-SCNN',
        'bisenet_jax.models.fastscnn:DepthwiseSeparableFCNFastSCNN',
        heads=(('loss_cls', (_SIGMOID_CROSS_ENTROPY,)),
               ('loss_aux1', ({**_SIGMOID_CROSS_ENTROPY, 'scale_factor': 0.4},)),
               ('loss_aux2', ({**_SIGMOID_CROSS_ENTROPY, 'scale_factor': 0.4},))),
        official_file='depthwiseseparablefcn_fastscnn_cityscapes.pth', reference_miou=71.53,
        config='configs/fastscnn.py'),
}
# Every head name some network has, in a stable order (the config declares a loss key for each).
HEAD_NAMES = tuple(dict.fromkeys(name for network in NETWORKS.values()
                                 for name in network.head_names))
# 'float16' trains with dynamic loss scaling (GPUs without fast bfloat16, e.g. T4, V100).
# 'float64' (parameters and compute) is for exactness checks: runs that differ only in the
# order of float additions then agree to ~1e-12.
DTYPES = ('float32', 'bfloat16', 'float16', 'float64')


def imagenet_files() -> dict[str, str]:
  """Every official ImageNet file: ``{file name: its official address}``."""
  return {url.rsplit('/', 1)[-1]: url for entry in NETWORKS.values()
          for url in entry.imagenet_urls.values()}


def network(name: str) -> Network:
  """The registry entry ``name``, or a one-line error listing the known ones."""
  if name not in NETWORKS:
    raise UserError(f'unknown network {name!r}: choose one of {", ".join(NETWORKS)}.')
  return NETWORKS[name]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A segmentor to build (``models.build``).

  Attributes:
    name: a key of ``NETWORKS``.
    num_classes: the classifiers' width.
    stem: for a network with a ResNet, 'deep' (ResNet v1c, the official models) or 'classic'
      (7x7, torchvision weights); None for its official one, and for networks without one.
    dropout_rate: Dropout2d rate of every head (training only).
    dtype: compute precision, 'float32', 'bfloat16', 'float16' or 'float64' (BatchNorm
      statistics stay float32, parameters float32 except in 'float64').
  """
  name: str
  num_classes: int
  stem: str | None = None
  dropout_rate: float = 0.1
  dtype: str = 'float32'

  def __post_init__(self):
    stems = network(self.name).stems
    if self.stem is None and stems:
      object.__setattr__(self, 'stem', stems[0])
    if self.stem is not None and self.stem not in stems:
      choices = f'one of {", ".join(stems)}' if stems else 'unset: it has no ResNet stem'
      raise UserError(f'model stem {self.stem!r} does not fit {self.name}: make it {choices} '
                      '(config.model.stem).')
    if self.dtype not in DTYPES:
      raise UserError(f'model dtype {self.dtype!r} is not one of {", ".join(DTYPES)} '
                      '(config.model.dtype).')

  @property
  def network(self) -> Network:
    return NETWORKS[self.name]

  @property
  def module_options(self) -> dict[str, Any]:
    """The segmentor's keyword arguments beyond classes, dropout and precision."""
    return {**self.network.options, **({'stem': self.stem} if self.stem else {})}

  @property
  def param_dtype(self) -> str:
    """The parameters' precision (and the lr's): float64 in a float64 run, else float32."""
    return 'float64' if self.dtype == 'float64' else 'float32'

  def with_classes(self, num_classes: int) -> ModelSpec:
    return dataclasses.replace(self, num_classes=num_classes)

  def checkpoint_config(self) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the model: ``{'name', 'num_classes'[, 'stem']}``."""
    return {'name': self.name, 'num_classes': int(self.num_classes),
            **({'stem': self.stem} if self.stem else {})}

  @classmethod
  def from_checkpoint_config(cls, config: dict, **fields) -> ModelSpec:
    return cls(config['name'], config['num_classes'], config.get('stem'), **fields)
