"""An independent PyTorch FCN + BiSeNetV1: the PyTorch side of ``bench --compare-torch`` and the
second implementation the tests check the Flax model against.

It is written from the reference's description (docs/reference.md §1-3) alone, not from the
Flax code and without importing sssegmentation, so parity tests compare two separate
implementations. The package needs it for ``python -m bisenet_jax.bench --compare-torch``,
which times it beside JAX on the same inputs; the tests' helpers for random weights and
official-format files are in ``tests/torch_support.py``.

Module and attribute names mirror the official state-dict keys, and modules are registered in
the order that makes ``state_dict()`` list keys exactly as the official checkpoints
(``tests/data/ssseg_fcn_bisenetv1_*.txt``; the only ordering subtlety: a Bottleneck registers
``downsample`` before ``conv1``, a BasicBlock after ``bn2``). BatchNorm is plain
``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1), which has the same keys as the SyncBatchNorm used
in training. ReLUs are not in-place so that the tensors returned by ``forward_features`` are
never overwritten by a later layer.

Entry points: ``build_reference(arch, num_classes=19, dropout=0.1)`` (the segmentor, 'r18' or
'r50'), ``resnet_v1c(depth)`` / ``ResNet(depth, stem)`` (the bare context backbone).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# Per-variant widths (docs/reference.md §1.1): spatial-path widths S0..S3, context widths C0..C2,
# FFM output / main-head width F, aux-head feature width A.
ARCHS = {
  'r18': dict(depth=18, spatial=(64, 64, 64, 128), context=(128, 256, 512), ffm_out=256, aux=64),
  'r50': dict(
    depth=50, spatial=(256, 256, 256, 512), context=(512, 1024, 2048), ffm_out=1024, aux=256
  ),
}

# Names of the activations returned by `FCNBiSeNetV1.forward_features`, in forward order.
FEATURE_NAMES = (
  'stem',
  'maxpool',
  'layer1',
  'layer2',
  'layer3',
  'layer4',
  'gap_conv',
  'arm32',
  'c16',
  'arm16',
  'c8',
  'spatial',
  'ffm',
  'logits',
)


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
  """Conv (no bias, padding kernel // 2) -> BN -> ReLU, keys `.0` and `.1`."""
  return nn.Sequential(
    nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
    nn.BatchNorm2d(cout),
    nn.ReLU(),
  )


# --------------------------------------------------------------------------------------------
# ResNet (docs/reference.md §1.3)
# --------------------------------------------------------------------------------------------


def _shortcut(cin: int, cout: int, stride: int) -> Optional[nn.Sequential]:
  """The projection shortcut (1x1 conv with the block's stride, then BN), or None for identity."""
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
  """Two 3x3 convs; the stride sits on the first. `downsample` is registered last."""

  expansion = 1

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU()
    self.downsample = _shortcut(cin, planes, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (stride here, 'pytorch' style) -> 1x1 x4. `downsample` is registered first."""

  expansion = 4

  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.downsample = _shortcut(cin, planes * self.expansion, stride)
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


RESNET_SPECS = {
  18: (BasicBlock, (2, 2, 2, 2)),
  34: (BasicBlock, (3, 4, 6, 3)),
  50: (Bottleneck, (3, 4, 6, 3)),
  101: (Bottleneck, (3, 4, 23, 3)),
}


def _deep_stem() -> nn.Sequential:
  """v1c stem: three 3x3 Conv-BN-ReLU (3->32 s2, 32->32, 32->64), keys stem.0 .. stem.8."""
  return nn.Sequential(
    *conv_bn_relu(3, 32, 3, 2), *conv_bn_relu(32, 32, 3), *conv_bn_relu(32, 64, 3)
  )


class ResNet(nn.Module):
  """ResNet with output stride 32 returning all four stages (x4, x8, x16, x32).

  stem='deep' is ResNet-v1c (keys `stem.*`, as in the context path); stem='classic' is the
  torchvision 7x7 stem (keys `conv1`, `bn1`). No classifier: see `imagenet_state_dict`.
  """

  def __init__(self, depth: int, stem: str = 'deep'):
    super().__init__()
    if stem not in ('deep', 'classic'):
      raise ValueError(f"stem must be 'deep' or 'classic', got {stem!r}")
    block, num_blocks = RESNET_SPECS[depth]
    if stem == 'deep':
      self.stem = _deep_stem()
    else:
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
      stride = 1 if i == 0 else 2
      blocks = []
      for j in range(n):
        blocks.append(block(cin, planes, stride if j == 0 else 1))
        cin = planes * block.expansion
      self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
    self.out_channels = cin

  def _stem(self, x: torch.Tensor) -> torch.Tensor:
    if hasattr(self, 'stem'):
      return self.stem(x)
    return self.relu(self.bn1(self.conv1(x)))

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Activations 'stem' (before max-pool), 'maxpool', 'layer1' .. 'layer4'."""
    feats = {'stem': self._stem(x)}
    feats['maxpool'] = out = self.maxpool(feats['stem'])
    for i in range(1, 5):
      feats[f'layer{i}'] = out = getattr(self, f'layer{i}')(out)
    return feats

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    feats = self.forward_features(x)
    return tuple(feats[f'layer{i}'] for i in range(1, 5))


def resnet_v1c(depth: int) -> ResNet:
  """The deep-stem ResNet used as BiSeNetV1's context backbone."""
  return ResNet(depth, stem='deep')


# --------------------------------------------------------------------------------------------
# BiSeNetV1 (docs/reference.md §1.4-1.6)
# --------------------------------------------------------------------------------------------


class SpatialPath(nn.Module):
  """Four Conv-BN-ReLU layers: 7x7/s2, 3x3/s2, 3x3/s2, 1x1/s1 (output stride 8)."""

  def __init__(self, widths: tuple[int, int, int, int]):
    super().__init__()
    s0, s1, s2, s3 = widths
    self.layer1 = conv_bn_relu(3, s0, 7, 2)
    self.layer2 = conv_bn_relu(s0, s1, 3, 2)
    self.layer3 = conv_bn_relu(s1, s2, 3, 2)
    self.layer4 = conv_bn_relu(s2, s3, 1, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AttentionRefinementModule(nn.Module):
  """y = Conv-BN-ReLU(x); out = y * Sigmoid(BN(conv1x1(GAP(y)))). No ReLU before the Sigmoid."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.conv_layer = conv_bn_relu(cin, cout, 3)
    self.atten_conv_layer = nn.Sequential(
      nn.AdaptiveAvgPool2d(1),
      nn.Conv2d(cout, cout, 1, bias=False),
      nn.BatchNorm2d(cout),
      nn.Sigmoid(),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv_layer(x)
    return y * self.atten_conv_layer(y)


class ContextPath(nn.Module):
  """ResNet-v1c plus two ARMs, a global-context branch and two 3x3 heads; returns (c8, c16)."""

  def __init__(self, depth: int, widths: tuple[int, int, int]):
    super().__init__()
    c0, c1, c2 = widths
    self.backbone_net = resnet_v1c(depth)
    self.arm16 = AttentionRefinementModule(c1, c0)
    self.arm32 = AttentionRefinementModule(c2, c0)
    self.conv_head32 = conv_bn_relu(c0, c0, 3)
    self.conv_head16 = conv_bn_relu(c0, c0, 3)
    self.gap_conv = nn.Sequential(
      nn.AdaptiveAvgPool2d(1),
      nn.Conv2d(c2, c0, 1, bias=False),
      nn.BatchNorm2d(c0),
      nn.ReLU(),
    )

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """ResNet activations plus 'gap_conv', 'arm32', 'c16', 'arm16', 'c8'.

    'arm32' / 'arm16' are the ARM outputs before the broadcast add of 'gap_conv' / 'c16'.
    """
    feats = self.backbone_net.forward_features(x)
    x16, x32 = feats['layer3'], feats['layer4']
    feats['gap_conv'] = self.gap_conv(x32)
    feats['arm32'] = self.arm32(x32)
    up32 = _nearest(feats['arm32'] + feats['gap_conv'], size=x16.shape[2:])
    feats['c16'] = self.conv_head32(up32)
    feats['arm16'] = self.arm16(x16)
    up16 = _nearest(feats['arm16'] + feats['c16'], size=feats['layer2'].shape[2:])
    feats['c8'] = self.conv_head16(up16)
    return feats

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    feats = self.forward_features(x)
    return feats['c8'], feats['c16']


def _nearest(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
  """PyTorch legacy nearest resize (src = floor(dst * in / out)) to an explicit size."""
  return F.interpolate(x, size=tuple(size), mode='nearest')


class FeatureFusionModule(nn.Module):
  """f = Conv-BN-ReLU(concat[spatial, context]); a = Sigmoid(ReLU(BN(conv(GAP(f))))); f*a + f."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.conv1 = conv_bn_relu(cin, cout, 1)
    self.gap = nn.AdaptiveAvgPool2d(1)
    self.conv_atten = nn.Sequential(
      nn.Conv2d(cout, cout, 1, bias=False),
      nn.BatchNorm2d(cout),
      nn.ReLU(),
      nn.Sigmoid(),
    )

  def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    f = self.conv1(torch.cat([spatial, context], dim=1))
    a = self.conv_atten(self.gap(f))
    return f * a + f


class BiSeNetV1(nn.Module):
  """Context path + spatial path + FFM; forward returns (c8, c16, ffm_out)."""

  def __init__(
    self,
    depth: int,
    spatial_widths: tuple[int, ...],
    context_widths: tuple[int, ...],
    out_channels: int,
  ):
    super().__init__()
    self.context_path = ContextPath(depth, context_widths)
    self.spatial_path = SpatialPath(spatial_widths)
    self.ffm = FeatureFusionModule(spatial_widths[-1] + context_widths[0], out_channels)

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Context-path activations plus 'spatial' and 'ffm'."""
    feats = self.context_path.forward_features(x)
    feats['spatial'] = self.spatial_path(x)
    feats['ffm'] = self.ffm(feats['spatial'], feats['c8'])
    return feats

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = self.forward_features(x)
    return feats['c8'], feats['c16'], feats['ffm']


# --------------------------------------------------------------------------------------------
# Segmentor (docs/reference.md §1.7)
# --------------------------------------------------------------------------------------------


def fcn_head(cin: int, width: int, num_classes: int, dropout: float) -> nn.Sequential:
  """conv3x3 (no bias) -> BN -> ReLU -> Dropout2d -> conv1x1 with bias, keys .0 .1 .4."""
  return nn.Sequential(
    nn.Conv2d(cin, width, 3, 1, 1, bias=False),
    nn.BatchNorm2d(width),
    nn.ReLU(),
    nn.Dropout2d(dropout),
    nn.Conv2d(width, num_classes, 1),
  )


class FCNBiSeNetV1(nn.Module):
  """The FCN segmentor: BiSeNetV1 backbone, main head on the FFM output, aux heads on c8, c16.

  forward(x) in eval mode returns the main logits (N, K, ceil(H/8), ceil(W/8)) and skips the
  aux heads. In train mode it returns (logits, aux8, aux16) at strides 8, 8 and 16; nothing is
  upsampled (that, and the losses, belong to the task, not the model).
  """

  def __init__(self, arch: str, num_classes: int = 19, dropout: float = 0.1):
    super().__init__()
    cfg = ARCHS[arch]
    c0, ffm_out = cfg['context'][0], cfg['ffm_out']
    self.backbone_net = BiSeNetV1(cfg['depth'], cfg['spatial'], cfg['context'], ffm_out)
    self.decoder = fcn_head(ffm_out, ffm_out, num_classes, dropout)
    self.auxiliary_decoder = nn.ModuleList(
      [fcn_head(c0, cfg['aux'], num_classes, dropout) for _ in range(2)]
    )

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named activations (NCHW) for per-block parity checks, keyed by FEATURE_NAMES:

    'stem'      after the deep stem's last ReLU, before max-pool   (stride 2, 64 ch)
    'maxpool'   after the 3x3/s2 max-pool                          (stride 4)
    'layer1'..'layer4'  ResNet stage outputs x4, x8, x16, x32
    'gap_conv'  global-context branch on x32                       (N, C0, 1, 1)
    'arm32'     arm32(x32), before adding 'gap_conv'                (stride 32)
    'c16'       conv_head32 output (aux 1 input)                    (stride 16)
    'arm16'     arm16(x16), before adding 'c16'                     (stride 16)
    'c8'        conv_head16 output (aux 0 input)                    (stride 8)
    'spatial'   spatial-path output                                (stride 8, S3 ch)
    'ffm'       feature-fusion output (main head input)            (stride 8)
    'logits'    main head output                                   (stride 8, K ch)
    """
    feats = self.backbone_net.forward_features(x)
    feats['logits'] = self.decoder(feats['ffm'])
    return feats

  def forward(self, x: torch.Tensor):
    feats = self.forward_features(x)
    if not self.training:
      return feats['logits']
    aux8 = self.auxiliary_decoder[0](feats['c8'])
    aux16 = self.auxiliary_decoder[1](feats['c16'])
    return feats['logits'], aux8, aux16


def build_reference(arch: str, num_classes: int = 19, dropout: float = 0.1) -> FCNBiSeNetV1:
  """The official segmentor for arch 'r18' or 'r50', with PyTorch's default initialisation."""
  if arch not in ARCHS:
    raise ValueError(f'arch must be one of {sorted(ARCHS)}, got {arch!r}')
  return FCNBiSeNetV1(arch, num_classes, dropout)
