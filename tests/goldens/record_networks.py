"""Records what sssegmentation 1.7.0 itself computes for the four networks, in float64.

Run from the repository root under an environment that has the reference (no JAX needed)::

  python3 -m venv /tmp/ssseg-venv
  /tmp/ssseg-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
  /tmp/ssseg-venv/bin/pip install --no-build-isolation --no-deps sssegmentation==1.7.0
  /tmp/ssseg-venv/bin/pip install pandas opencv-python-headless dill tqdm scipy numpy
  /tmp/ssseg-venv/bin/python tests/goldens/record_networks.py [network ...]

It writes ``tests/goldens/<network>.npz`` (outputs only, no weights; docs/reference.md §15). The
segmentors are built by the package's own builder from the reference configs written out below
(the wheel ships no configs), with plain BatchNorm2d for SyncBatchNorm: one process forwarding
the whole global batch computes SyncBN's statistics. Weights, images and labels come from
``draw.py``. Every head's Dropout2d is put in eval mode, so train mode is deterministic.
"""

from __future__ import annotations

import argparse
import copy
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ssseg.modules import BuildOptimizer, BuildScheduler, BuildSegmentor, SSSegInputStructure
from ssseg.modules.models.losses import calculatelosses
from ssseg.modules.models.losses import crossentropyloss

import draw

OUT = Path(__file__).resolve().parent
# The reference's labels mark ignored pixels -100 (docs/reference.md §4.4).
REFERENCE_IGNORE = -100


def cross_entropy(scale_factor: float = 1.0, use_sigmoid: bool = False) -> dict:
  loss = {'type': 'CrossEntropyLoss', 'scale_factor': scale_factor,
          'ignore_index': REFERENCE_IGNORE, 'reduction': 'mean'}
  return {**loss, 'use_sigmoid': True} if use_sigmoid else loss


def segmentor_config(segmentor: str, backbone: dict, head: dict, auxiliary: list,
                     losses: dict) -> dict:
  """The parts of a SEGMENTOR_CFG that building and training the model read."""
  return {'type': segmentor, 'num_classes': draw.NUM_CLASSES, 'align_corners': False,
          'norm_cfg': {'type': 'BatchNorm2d'}, 'act_cfg': {'type': 'ReLU', 'inplace': True},
          'backbone': {**backbone, 'pretrained': False}, 'head': head, 'auxiliary': auxiliary,
          'losses': losses}


def bisenetv1(depth: int) -> dict:
  """fcn_bisenetv1_resnet{18,50}os32_cityscapes (docs/reference.md §1.1, §1.7, §4.4)."""
  spatial, context, out, aux = {18: ((64, 64, 64, 128), (128, 256, 512), 256, 64),
                                50: ((256, 256, 256, 512), (512, 1024, 2048), 1024, 256)}[depth]
  resnet = {'type': 'ResNet', 'structure_type': f'resnet{depth}conv3x3stem', 'depth': depth,
            'pretrained': False, 'outstride': 32, 'use_conv3x3_stem': True}
  return segmentor_config(
      'FCN',
      {'type': 'BiSeNetV1', 'structure_type': 'bisenetv1', 'selected_indices': (0, 1, 2),
       'spatial_channels_list': spatial, 'context_channels_list': context, 'out_channels': out,
       'backbone_cfg': resnet},
      {'in_channels': out, 'feats_channels': out, 'dropout': 0.1, 'num_convs': 1},
      [{'in_channels': context[0], 'out_channels': aux, 'dropout': 0.1, 'num_convs': 1}] * 2,
      {name: cross_entropy() for name in ('loss_aux1', 'loss_aux2', 'loss_cls')})


# fcn_bisenetv2_cityscapes (docs/reference.md §10) and depthwiseseparablefcn_fastscnn_cityscapes
# (§11).
SEGMENTORS = {
    'bisenetv1_r18': bisenetv1(18),
    'bisenetv1_r50': bisenetv1(50),
    'bisenetv2': segmentor_config(
        'FCN', {'type': 'BiSeNetV2', 'structure_type': 'bisenetv2',
                'selected_indices': (0, 1, 2, 3, 4)},
        {'in_channels': 128, 'feats_channels': 1024, 'dropout': 0.1, 'num_convs': 1},
        [{'in_channels': cin, 'out_channels': cout, 'dropout': 0.1, 'num_convs': 2}
         for cin, cout in ((16, 16), (32, 64), (64, 256), (128, 1024))],
        {name: cross_entropy() for name in
         ('loss_aux1', 'loss_aux2', 'loss_aux3', 'loss_aux4', 'loss_cls')}),
    'fastscnn': segmentor_config(
        'DepthwiseSeparableFCN', {'type': 'FastSCNN', 'structure_type': 'fastscnn',
                                  'selected_indices': (0, 1, 2)},
        {'in_channels': 128, 'feats_channels': 128, 'dropout': 0.1},
        [{'in_channels': 64, 'out_channels': 32, 'dropout': 0.1},
         {'in_channels': 128, 'out_channels': 32, 'dropout': 0.1}],
        {'loss_aux1': cross_entropy(0.4, True), 'loss_aux2': cross_entropy(0.4, True),
         'loss_cls': cross_entropy(1.0, True)}),
}

# The 'scheduler' entry of each config plus what the trainer adds to it (docs/reference.md §4.1-
# 4.3, §11.3): BiSeNets 860 epochs of 186 iterations with a linear warm-up, Fast-SCNN 1750 of 93.
_BISENET_SCHEDULER = {
    'type': 'PolyScheduler', 'max_epochs': 860, 'iters_per_epoch': 186, 'power': 0.9,
    'min_lr': 1e-4, 'warmup_cfg': {'type': 'linear', 'ratio': 0.1, 'iters': 1000},
    'optimizer': {'type': 'SGD', 'lr': 0.05, 'momentum': 0.9, 'weight_decay': 5e-4,
                  'params_rules': {}}}
SCHEDULERS = {
    'bisenetv1_r18': _BISENET_SCHEDULER, 'bisenetv1_r50': _BISENET_SCHEDULER,
    'bisenetv2': _BISENET_SCHEDULER,
    'fastscnn': {'type': 'PolyScheduler', 'max_epochs': 1750, 'iters_per_epoch': 93,
                 'power': 0.9, 'min_lr': 1e-4,
                 'optimizer': {'type': 'SGD', 'lr': 0.12, 'momentum': 0.9, 'weight_decay': 4e-5,
                               'params_rules': {}}},
}


def sigmoid_loss_in_float64() -> None:
  """Lets the reference's sigmoid cross-entropy run in float64 on float64 logits.

  Its ``binarycrossentropy`` casts the one-hot target to float32 (``.float()``), and PyTorch's
  ``binary_cross_entropy_with_logits`` of float64 logits and a float32 target returns float32:
  Fast-SCNN's losses and their gradients would carry float32 roundings (~1e-8) into a float64
  recording. The target is cast to the logits' dtype instead, which changes no value (it holds
  0 and 1) and nothing in float32 training.
  """
  functional = types.SimpleNamespace(**vars(F))
  functional.binary_cross_entropy_with_logits = (
      lambda x, target, *args, **kwargs: F.binary_cross_entropy_with_logits(
          x, target.to(x.dtype), *args, **kwargs))
  crossentropyloss.F = functional


def build(name: str) -> torch.nn.Module:
  """The reference segmentor in float64 with draw's weights, after checking that its state dict
  has exactly the official keys and shapes, in the official order."""
  model = BuildSegmentor(copy.deepcopy(SEGMENTORS[name]), mode='TRAIN')
  built = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
  official = draw.read_key_list(draw.DATA / draw.KEY_LISTS[name])
  if built != official:
    raise SystemExit(f'{name}: the built model is not the official one: '
                     f'{sorted(set(built) ^ set(official))[:10]}')
  model.load_state_dict({k: torch.from_numpy(v) for k, v in draw.state_dict(name).items()})
  return model.double()


def record_initialisation(name: str) -> dict[str, np.ndarray]:
  """The reference's own initialisation of a segmentor built with ``pretrained`` off (every
  layer at its module's default, or what the network's code sets): per state-dict tensor, the
  mean, the standard deviation and the largest magnitude of its values (``init/keys`` and the
  rows of ``init/mean_std_absmax``). Random streams differ
  between frameworks, so these summaries of the distributions are what can be compared."""
  torch.manual_seed(0)
  model = BuildSegmentor(copy.deepcopy(SEGMENTORS[name]), mode='TRAIN')
  keys, stats = [], []
  for key, value in model.state_dict().items():
    if not key.endswith('num_batches_tracked'):
      values = value.detach().double().numpy()
      keys.append(key)
      stats.append((values.mean(), values.std(), np.abs(values).max()))
  return {'init/keys': np.array(keys), 'init/mean_std_absmax': np.array(stats, np.float64)}


def deterministic_train(model: torch.nn.Module) -> None:
  """Train mode (batch statistics, running-statistic updates, every head) without dropout."""
  model.train()
  for module in model.modules():
    if isinstance(module, torch.nn.modules.dropout._DropoutNd):
      module.eval()


def head_recorder(model: torch.nn.Module, heads: list[str]) -> list:
  """Hooks that keep each head's logits (at its own stride) of the segmentor's forward, as
  ``[(head name, logits)]`` in the loss config's naming: decoder 'loss_cls', auxiliary decoder
  i 'loss_aux{i+1}'."""
  recorded = []
  modules = [model.decoder, *model.auxiliary_decoder]
  for head, module in zip(heads, modules, strict=True):
    module.register_forward_hook(lambda _, __, out, head=head: recorded.append((head, out)))
  return recorded


def head_names(name: str) -> list[str]:
  aux = sorted(k for k in SEGMENTORS[name]['losses'] if k != 'loss_cls')
  return ['loss_cls', *aux]


def tensors(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
  """The reference's float64 NCHW images and int64 labels (ignored pixels -100)."""
  images = torch.from_numpy(draw.normalized(batch).transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(batch['label'].astype(np.int64))
  return images, torch.where(labels == draw.IGNORE, REFERENCE_IGNORE, labels)


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def digests(model: torch.nn.Module, before: dict[str, torch.Tensor], keys) -> dict:
  """``{key: draw.digest of (value now - value before)}`` for the state-dict entries ``keys``
  selects (a predicate on the key)."""
  return {key: draw.digest(key, (value - before[key]).numpy())
          for key, value in model.state_dict().items() if keys(key)}


def is_statistic(key: str) -> bool:
  return key.endswith(('running_mean', 'running_var'))


def is_parameter(key: str) -> bool:
  return not (is_statistic(key) or key.endswith('num_batches_tracked'))


def record_forwards(name: str) -> dict[str, np.ndarray]:
  """Eval-mode logits, then one train-mode forward: every head's logits, their losses by the
  segmentor's own loss computation, and the running statistics it leaves (digested)."""
  model = build(name).eval()
  before = {k: v.clone() for k, v in model.state_dict().items()}
  images, labels = tensors(draw.forward_batch())
  with torch.no_grad():
    out = {'eval/logits': nhwc(model(SSSegInputStructure(mode='TEST', images=images)).seg_logits)}
    heads = head_names(name)
    recorded = head_recorder(model, heads)
    deterministic_train(model)
    result = model(SSSegInputStructure(mode='TRAIN', images=images, seg_targets=labels))
  assert [head for head, _ in recorded] == heads
  for head, logits in recorded:
    out[f'train/logits/{head}'] = nhwc(logits)
    out[f'train/loss/{head}'] = np.float64(result.losses_log_dict[head])
  out.update({f'train/stats/{k}': v for k, v in digests(model, before, is_statistic).items()})
  return out


def record_step(name: str) -> dict[str, np.ndarray]:
  """One SGD step on the global batch as the reference's replicas take it.

  The batch of STEP_REPLICAS x n images is forwarded at once (BatchNorm statistics over the
  global batch: SyncBN); replica g's loss is the loss config on rows [g n, (g + 1) n), each
  head's logits upsampled to the crop as the segmentor does; DDP averages the replicas'
  gradients, i.e. differentiates the mean of their losses. The optimizer and scheduler are the
  package's, driven as its trainer drives them: updatelr, forward, zero_grad, backward, step.
  Recorded: the lr, each head's loss per replica, and the digests of the parameters' and the
  running statistics' change.
  """
  model = build(name)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  config = SEGMENTORS[name]
  optimizer = BuildOptimizer(model, config_scheduler(name)['optimizer'])
  scheduler = BuildScheduler(optimizer=optimizer, scheduler_cfg=config_scheduler(name))
  images, labels = tensors(draw.step_batch(name))
  heads = head_names(name)
  recorded = head_recorder(model, heads)
  deterministic_train(model)

  lr = scheduler.updatelr()
  model(SSSegInputStructure(mode='TRAIN', images=images, seg_targets=labels))
  upsampled = {head: F.interpolate(logits, size=images.shape[2:], mode='bilinear',
                                   align_corners=False) for head, logits in recorded}
  per_image = draw.STEP_IMAGES_PER_REPLICA[name]
  group_losses, group_totals = {head: [] for head in heads}, []
  for g in range(draw.STEP_REPLICAS):
    rows = slice(g * per_image, (g + 1) * per_image)
    total, logged = calculatelosses(
        predictions={head: value[rows] for head, value in upsampled.items()},
        annotations={'seg_targets': labels[rows]}, losses_cfg=config['losses'])
    group_totals.append(total)
    for head in heads:
      group_losses[head].append(logged[head])
  optimizer.zero_grad()
  (sum(group_totals) / draw.STEP_REPLICAS).backward()
  scheduler.step()

  out = {'step/lr': np.float64(lr)}
  out.update({f'step/loss/{head}': np.asarray(values) for head, values in group_losses.items()})
  out.update({f'step/stats/{k}': v for k, v in digests(model, before, is_statistic).items()})
  out.update({f'step/params/{k}': v for k, v in digests(model, before, is_parameter).items()})
  return out


def config_scheduler(name: str) -> dict:
  """The scheduler config as the trainer completes it (lr and params_rules copied from the
  optimizer's)."""
  scheduler = copy.deepcopy(SCHEDULERS[name])
  scheduler.update({'lr': scheduler['optimizer']['lr'],
                    'params_rules': scheduler['optimizer']['params_rules']})
  return scheduler


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('networks', nargs='*', default=list(SEGMENTORS),
                      help=f'the networks to record (default: all of {", ".join(SEGMENTORS)})')
  args = parser.parse_args(argv)
  sigmoid_loss_in_float64()
  unknown = set(args.networks) - set(SEGMENTORS)
  if unknown:
    parser.error(f'unknown networks {sorted(unknown)}: choose from {", ".join(SEGMENTORS)}')
  for name in args.networks:
    out = {**record_forwards(name), **record_step(name), **record_initialisation(name)}
    path = OUT / f'{name}.npz'
    np.savez_compressed(path, **out)
    print(f'{name}: {len(out)} arrays, {path.stat().st_size / 1e6:.2f} MB -> {path}')


if __name__ == '__main__':
  sys.exit(main())
