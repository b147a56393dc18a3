"""A training run: the data, the model, the optimizer and the run's schedule of steps."""

from __future__ import annotations

import dataclasses

from bisenet_jax.specs.data import DataSpec
from bisenet_jax.specs.model import ModelSpec, Network


# Precisions of float32 convolutions and matmuls in training (``jax.default_matmul_precision``):
# full float32 (the reference's: TF32 off), TF32 passes, one bfloat16 pass, the backend's default.
PRECISIONS = ('highest', 'tensorfloat32', 'bfloat16', 'default')


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """SGD with momentum and L2 weight decay under the poly schedule with a multiplicative
  warm-up (``train.optim``; docs/reference.md §4.2-4.3)."""
  base_lr: float = 0.05
  min_lr: float = 1e-4
  power: float = 0.9
  warmup_steps: int = 1000
  warmup_ratio: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """What each head is trained to minimise, with sssegmentation's names (docs/reference.md §9).

  Attributes:
    losses: (head, its losses) for every head of the network, in the order its segmentor
      returns their logits (``Network.heads``); each loss a mapping ``{'type':
      'CrossEntropyLoss' | 'DiceLoss' | 'FocalLoss' | 'LovaszLoss', **arguments}``, a head's
      losses summed.
    sampler: None, or the OHEM pixel sampler ``{'type': 'OHEMPixelSampler', 'thresh',
      'min_kept_per_image'}`` applied to every head.
    replicas: the reference's GPU count: every loss is computed on each of this many groups of
      consecutive rows of the batch alone and the groups' losses are averaged, as under
      DistributedDataParallel (docs/reference.md §4.4).
  """
  losses: tuple
  sampler: dict | None = None
  replicas: int = 1

  @classmethod
  def reference(cls, network: Network, replicas: int = 1) -> ObjectiveSpec:
    """The network's reference objective (its heads' losses, no sampler) over ``replicas``."""
    return cls(tuple((name, tuple(dict(loss) for loss in losses))
                     for name, losses in network.heads), replicas=replicas)


@dataclasses.dataclass(frozen=True)
class LossScaleSpec:
  """Dynamic loss scaling for float16 training, PyTorch's GradScaler settings, and how many
  skipped steps in a row stop a run (at GradScaler's defaults, 100 skips take the scale from
  65536 to 2**-84: a gradient would then have to exceed 65504 * 2**84 to overflow float16)."""
  init_scale: float = 65536.0
  growth_factor: float = 2.0
  backoff_factor: float = 0.5
  growth_interval: int = 2000
  max_consecutive_skips: int = 100


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Everything ``train.loop`` needs, built once from the config (``train.config.train_spec``).

  Attributes:
    data, model, optimizer: what to train on, what to train, how.
    seed: seeds the initialisation, the data order and augmentation, and dropout.
    batch_size: images per step over every device and process.
    total_steps: optimizer steps of the whole run.
    log_every_steps, checkpoint_every_steps, eval_every_steps: the run's cadences, in steps.
    keep_checkpoints: how many of the newest checkpoints stay on disk.
    eval_batch_per_device: images per device in each evaluation step.
    objective: the losses per head and the OHEM sampler.
    init_checkpoint: a whole model to start from (fine-tuning), or ''.
    init_backbone: an ImageNet ResNet file for the context backbone (a path, or an official
      file name that ``interop.pretrained`` finds in its cache or downloads), or ''.
    ema_momentum: None, or the weight of the new value in the exponential moving average of
      the variables kept beside them (sssegmentation's EMA).
    accumulate_steps: micro-batches per optimizer step (``batch_size`` images in all).
    loss_scale: float16 training's dynamic loss scaling (None for other precisions).
    precision: of float32 convolutions and matmuls in the training step and the evaluations
      during training, one of ``PRECISIONS``.
  """
  data: DataSpec
  model: ModelSpec
  optimizer: OptimizerSpec
  seed: int
  batch_size: int
  total_steps: int
  log_every_steps: int
  checkpoint_every_steps: int
  eval_every_steps: int
  keep_checkpoints: int
  eval_batch_per_device: int
  objective: ObjectiveSpec
  init_checkpoint: str = ''
  init_backbone: str = ''
  ema_momentum: float | None = None
  accumulate_steps: int = 1
  loss_scale: LossScaleSpec | None = None
  precision: str = 'highest'
