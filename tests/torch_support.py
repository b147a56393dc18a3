"""PyTorch helpers for the tests: deterministic random weights, ImageNet-style backbone files,
checkpoints in sssegmentation's formats, and the official key lists."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from bisenet_jax.bench.torch_models.bisenetv1 import ResNet

# Weight std = WEIGHT_GAIN / sqrt(fan_in), about 0.78x Kaiming-normal. Residual adds and BN running
# statistics that do not match the real batch statistics make the scale sensitive: at 64x64 this
# keeps every activation O(1) (logits std ~0.4 for R18, ~0.7 for R50), whereas plain Kaiming
# (gain sqrt(2)) already grows R50's logits to std ~400.
WEIGHT_GAIN = 1.1


def _uniform(shape, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
  return torch.empty(shape).uniform_(low, high, generator=gen)


def _randomize_weight_(module: nn.Module, gen: torch.Generator) -> None:
  """Conv / Linear: weight N(0, std) with std = WEIGHT_GAIN / sqrt(fan_in); bias U(-0.2, 0.2)."""
  weight = module.weight
  fan_in = weight[0].numel()
  std = WEIGHT_GAIN / math.sqrt(fan_in)
  weight.copy_(torch.empty(weight.shape).normal_(0.0, std, generator=gen))
  if module.bias is not None:
    module.bias.copy_(_uniform(module.bias.shape, -0.2, 0.2, gen))


def _randomize_bn_(bn: nn.BatchNorm2d, gen: torch.Generator) -> None:
  n = bn.num_features
  bn.weight.copy_(_uniform(n, 0.5, 1.5, gen))
  bn.bias.copy_(_uniform(n, -0.2, 0.2, gen))
  bn.running_mean.copy_(_uniform(n, -0.2, 0.2, gen))
  bn.running_var.copy_(_uniform(n, 0.5, 2.0, gen))
  bn.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=gen)))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int) -> nn.Module:
  """Fill every parameter and buffer of `model` deterministically (in place) and return it.

  Raises TypeError on a module type with its own tensors that this function does not know,
  so no tensor can silently keep its default value.
  """
  gen = torch.Generator().manual_seed(seed)
  for name, module in model.named_modules():
    if isinstance(module, (nn.Conv2d, nn.Linear)):
      _randomize_weight_(module, gen)
    elif isinstance(module, nn.BatchNorm2d):
      _randomize_bn_(module, gen)
    elif list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)):
      raise TypeError(f'randomize_ does not handle {type(module).__name__} at {name!r}')
  return model


def imagenet_state_dict(
  depth: int, stem: str = 'deep', with_fc: bool = True, seed: int = 0
) -> OrderedDict:
  """A random bare-ResNet state dict shaped like an ImageNet file.

  stem='deep' mimics the OpenMMLab v1c files the reference loads (keys `stem.*`); stem='classic'
  mimics torchvision's (keys `conv1`, `bn1`). With `with_fc`, the 1000-class classifier
  `fc.weight` (1000, C) and `fc.bias` (1000,) are appended, as in the real files.
  """
  resnet = randomize_(ResNet(depth, stem), seed)
  state = resnet.state_dict()
  if with_fc:
    fc = randomize_(nn.Linear(resnet.out_channels, 1000), seed + 1)
    state['fc.weight'] = fc.weight.detach()
    state['fc.bias'] = fc.bias.detach()
  return state


def _sgd_state(model: nn.Module) -> dict:
  """SGD state dict (docs/reference.md §2) after one step, taken on copies so `model` is
  untouched."""
  params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
  optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
  for p in params:
    p.grad = torch.full_like(p, 1e-3)
  optimizer.step()
  return optimizer.state_dict()


def save_official_checkpoint(model: nn.Module, path, kind: str = 'full') -> None:
  """Write `model` as sssegmentation would, with torch.save.

  kind='full':   the training checkpoint {'cur_epoch': 860, 'cur_iter': 159960,
                 'optimizer': SGD state dict, 'model': state_dict}.
  kind='bare':   the state dict alone.
  kind='module': the state dict alone with every key prefixed by 'module.' (a DDP-wrapped save).
  """
  state = model.state_dict()
  if kind == 'full':
    payload = {'cur_epoch': 860, 'cur_iter': 159960, 'optimizer': _sgd_state(model), 'model': state}
  elif kind == 'bare':
    payload = state
  elif kind == 'module':
    payload = OrderedDict((f'module.{k}', v) for k, v in state.items())
  else:
    raise ValueError(f"kind must be 'full', 'bare' or 'module', got {kind!r}")
  torch.save(payload, path)


def read_key_list(path) -> tuple[list[tuple[str, tuple[int, ...]]], int]:
  """Parse a key-list file: header '<n_keys> params <n_params>', then 'key (d0, d1, ...)' lines.

  Returns ([(key, shape), ...] in file order, n_params). Raises ValueError if the number of
  key lines disagrees with the header.
  """
  with open(path) as f:
    header, *lines = [line.strip() for line in f if line.strip()]
  n_keys, word, n_params = header.split()
  if word != 'params':
    raise ValueError(f'{path}: unexpected header {header!r}')
  entries = []
  for line in lines:
    key, shape = line.split(' ', 1)
    dims = shape.strip('()').replace(' ', '').split(',')
    entries.append((key, tuple(int(d) for d in dims if d)))
  if len(entries) != int(n_keys):
    raise ValueError(f'{path}: header says {n_keys} keys, found {len(entries)}')
  return entries, int(n_params)
