"""A training run: the data, the model, the optimizer and the run's schedule of steps."""

from __future__ import annotations

import dataclasses

from bisenet_jax.specs.data import DataSpec
from bisenet_jax.specs.model import ModelSpec


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


# The heads' names, in the order the model returns their logits: the main head (on the fused
# features), then the auxiliary heads on c8 and c16 (docs/reference.md §1.9).
HEADS = ('loss_cls', 'loss_aux1', 'loss_aux2')
DEFAULT_LOSSES = tuple((head, ({'type': 'CrossEntropyLoss'},)) for head in HEADS)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
  """What each head is trained to minimise, with sssegmentation's names (docs/reference.md §9).

  Attributes:
    losses: (head, its losses) for every head in ``HEADS`` order; each loss a mapping
      ``{'type': 'CrossEntropyLoss' | 'DiceLoss' | 'FocalLoss' | 'LovaszLoss', **arguments}``,
      a head's losses summed. The default is the reference recipe's three cross-entropies.
    sampler: None, or the OHEM pixel sampler ``{'type': 'OHEMPixelSampler', 'thresh',
      'min_kept_per_image'}`` applied to every head.
  """
  losses: tuple = DEFAULT_LOSSES
  sampler: dict | None = None


@dataclasses.dataclass(frozen=True)
class LossScaleSpec:
  """Dynamic loss scaling for float16 training, PyTorch's GradScaler settings."""
  init_scale: float = 65536.0
  growth_factor: float = 2.0
  backoff_factor: float = 0.5
  growth_interval: int = 2000


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
    init_checkpoint: a whole model to start from (fine-tuning), or ''.
    init_backbone: an ImageNet ResNet file for the context backbone, or ''.
    objective: the losses per head and the OHEM sampler.
    ema_momentum: None, or the weight of the new value in the exponential moving average of
      the variables kept beside them (sssegmentation's EMA).
    accumulate_steps: micro-batches per optimizer step (``batch_size`` images in all).
    loss_scale: float16 training's dynamic loss scaling (None for other precisions).
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
  init_checkpoint: str = ''
  init_backbone: str = ''
  objective: ObjectiveSpec = ObjectiveSpec()
  ema_momentum: float | None = None
  accumulate_steps: int = 1
  loss_scale: LossScaleSpec | None = None
