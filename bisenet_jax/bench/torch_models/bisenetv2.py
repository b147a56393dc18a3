"""A PyTorch FCN + BiSeNetV2, transcribed from sssegmentation 1.7.0's source: the PyTorch side of
the benchmark and the second implementation the tests check the Flax BiSeNetV2 against.

It follows ``ssseg/modules/models/backbones/bisenetv2.py`` (DetailBranch, StemBlock, GELayer,
CEBlock, SemanticBranch, BGALayer), ``backbones/bricks/convolution/dsconv.py``
(DepthwiseSeparableConv2d), ``segmentors/fcn/fcn.py`` (FCN), ``segmentors/base/auxiliary.py``
(DefaultAuxiliaryDecoder) and ``segmentors/base/base.py`` (which backbone output feeds which
auxiliary head), with the settings of ``configs/_base_/segmentors/bisenetv2.py``: main head
128 -> 1024 with one conv, four auxiliary heads (16->16, 32->64, 64->256, 128->1024) with two
convs each, dropout 0.1, ``align_corners=False``, backbone outputs (0, 1, 2, 3, 4). It does not
import sssegmentation.

Quirks of the reference it keeps, because a port that "fixes" them computes something else:

- GELayer with stride 2: its ``dwconv`` is expand-dwconv(stride 2) -> BN -> dwconv -> BN -> ReLU,
  with no activation between the two depthwise convs. The expand conv is a grouped conv
  (groups=in_channels) that multiplies the channels by 6, not a 1x1 conv.
- CEBlock: BatchNorm on the globally pooled (N, C, 1, 1) map (so training needs a batch of at
  least 2), then conv-BN-ReLU, broadcast-added to the input.
- BGALayer: ``detail_down`` is conv(stride 2) -> BN -> AvgPool2d(3, 2, 1) with PyTorch's default
  ``count_include_pad=True`` (border windows divide by 9); its two depthwise-separable convs have
  a BN after the depthwise conv only and nothing after the pointwise conv; the semantic
  ``conv`` branch has no activation before its sigmoid.
- The StemBlock's max-pool and every stride-2 conv use padding 1, so each halving is a ceil.
- Every resize is bilinear with ``size=`` (the target map's shape) and ``align_corners=False``.
- The semantic branch's stage outputs (not the CE output) feed the auxiliary heads; the CE
  output feeds only the BGA layer.

Module and attribute names mirror the official state-dict keys and are registered in the order
that makes ``state_dict()`` list keys exactly as the real package
(``tests/data/ssseg_fcn_bisenetv2_state_dict.txt``; a stride-2 GELayer registers ``shortcut``
before ``conv2``). BatchNorm is plain ``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1), which has
the same keys as the SyncBatchNorm used in training. ReLUs are not in-place so that the tensors
returned by ``forward_features`` are never overwritten by a later layer.

Entry point: ``build_reference(num_classes=19, dropout=0.1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from bisenet_jax.bench.torch_models.bricks import (DepthwiseSeparableConv2d, conv_bn, conv_bn_relu,
                                                  resize)

DETAIL_CHANNELS = (64, 64, 128)
SEMANTIC_CHANNELS = (16, 32, 64, 128)
EXPANSION = 6
BGA_CHANNELS = 128
HEAD_CHANNELS = 1024
# (in, out) channels of the auxiliary heads, fed the semantic stages 1..4 (loss_aux1..loss_aux4).
AUX_CHANNELS = ((16, 16), (32, 64), (64, 256), (128, 1024))

# Names of the activations returned by `FCNBiSeNetV2.forward_features`, in forward order.
FEATURE_NAMES = ('detail', 'stage1', 'stage2', 'stage3', 'stage4', 'ce', 'bga', 'logits')


class DetailBranch(nn.Module):
  """Three stages of 3x3 Conv-BN-ReLU (2, 3, 3 convs; the first of each has stride 2)."""

  def __init__(self, channels: tuple[int, ...] = DETAIL_CHANNELS, cin: int = 3):
    super().__init__()
    stages = []
    for i, width in enumerate(channels):
      layers = conv_bn_relu(cin if i == 0 else channels[i - 1], width, 3, 2)
      for _ in range(1 if i == 0 else 2):
        layers += conv_bn_relu(width, width, 3)
      stages.append(nn.Sequential(*layers))
    self.detail_branch = nn.ModuleList(stages)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for stage in self.detail_branch:
      x = stage(x)
    return x


class StemBlock(nn.Module):
  """conv3x3/s2, then [1x1 -> 3x3/s2] beside a 3x3/s2 max-pool, concatenated, fused by a 3x3."""

  def __init__(self, cin: int = 3, cout: int = 16):
    super().__init__()
    self.conv_first = nn.Sequential(*conv_bn_relu(cin, cout, 3, 2))
    self.convs = nn.Sequential(
      *conv_bn_relu(cout, cout // 2, 1), *conv_bn_relu(cout // 2, cout, 3, 2)
    )
    self.pool = nn.MaxPool2d(3, 2, 1)
    self.fuse_last = nn.Sequential(*conv_bn_relu(cout * 2, cout, 3))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.conv_first(x)
    return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
  """Gather-and-expand layer: conv3x3 -> grouped expand dwconv (x6) -> 1x1, plus a shortcut."""

  def __init__(self, cin: int, cout: int, exp_ratio: int = EXPANSION, stride: int = 1):
    super().__init__()
    mid = cin * exp_ratio
    self.conv1 = nn.Sequential(*conv_bn_relu(cin, cin, 3))
    if stride == 1:
      self.dwconv = nn.Sequential(*conv_bn_relu(cin, mid, 3, 1, groups=cin))
      self.shortcut = None
    else:
      # The reference has no activation between the two depthwise convs.
      self.dwconv = nn.Sequential(
        *conv_bn(cin, mid, 3, stride, groups=cin), *conv_bn_relu(mid, mid, 3, 1, groups=mid)
      )
      self.shortcut = nn.Sequential(
        DepthwiseSeparableConv2d(cin, cout, stride, dw_act=False, pw_act=False)
      )
    self.conv2 = nn.Sequential(*conv_bn(mid, cout, 1))
    self.act = nn.ReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.conv2(self.dwconv(self.conv1(x)))
    return self.act(out + (x if self.shortcut is None else self.shortcut(x)))


class CEBlock(nn.Module):
  """Context embedding: x + ConvBNReLU1x1(BN(GAP(x))), then a 3x3 Conv-BN-ReLU."""

  def __init__(self, cin: int = 128, cout: int = 128):
    super().__init__()
    self.gap = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.BatchNorm2d(cin))
    self.conv_gap = nn.Sequential(*conv_bn_relu(cin, cout, 1))
    self.conv_last = nn.Sequential(*conv_bn_relu(cout, cout, 3))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv_last(x + self.conv_gap(self.gap(x)))


class SemanticBranch(nn.Module):
  """StemBlock (stride 4), GE stages at strides 8, 16, 32 (2, 2, 4 layers), then the CE block."""

  def __init__(
    self, channels: tuple[int, ...] = SEMANTIC_CHANNELS, cin: int = 3, exp_ratio: int = EXPANSION
  ):
    super().__init__()
    self.stage_names = []
    for i, width in enumerate(channels):
      name = f'stage{i + 1}'
      self.stage_names.append(name)
      if i == 0:
        self.add_module(name, StemBlock(cin, width))
        continue
      num_layers = 4 if i == len(channels) - 1 else 2
      layers = [GELayer(channels[i - 1], width, exp_ratio, 2)]
      layers += [GELayer(width, width, exp_ratio, 1) for _ in range(num_layers - 1)]
      self.add_module(name, nn.Sequential(*layers))
    name = f'stage{len(channels)}_CEBlock'
    self.add_module(name, CEBlock(channels[-1], channels[-1]))
    self.stage_names.append(name)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's output: stage1 .. stage4, then the CE block's."""
    outs = []
    for name in self.stage_names:
      x = getattr(self, name)(x)
      outs.append(x)
    return outs


class BGALayer(nn.Module):
  """Bilateral guided aggregation of the detail (stride 8) and semantic (stride 32) features."""

  def __init__(self, channels: int = BGA_CHANNELS):
    super().__init__()
    self.detail_dwconv = nn.Sequential(
      DepthwiseSeparableConv2d(channels, channels, dw_act=False, pw_norm=False, pw_act=False)
    )
    # AvgPool2d keeps PyTorch's count_include_pad=True, as the reference does.
    self.detail_down = nn.Sequential(*conv_bn(channels, channels, 3, 2), nn.AvgPool2d(3, 2, 1))
    self.semantic_conv = nn.Sequential(*conv_bn(channels, channels, 3))
    self.semantic_dwconv = nn.Sequential(
      DepthwiseSeparableConv2d(channels, channels, dw_act=False, pw_norm=False, pw_act=False)
    )
    self.conv = nn.Sequential(*conv_bn_relu(channels, channels, 3))

  def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
    detail_dwconv = self.detail_dwconv(x_d)
    detail_down = self.detail_down(x_d)
    semantic_conv = resize(self.semantic_conv(x_s), detail_dwconv.shape[2:])
    semantic_dwconv = self.semantic_dwconv(x_s)
    fuse_1 = detail_dwconv * torch.sigmoid(semantic_conv)
    fuse_2 = resize(detail_down * torch.sigmoid(semantic_dwconv), fuse_1.shape[2:])
    return self.conv(fuse_1 + fuse_2)


class BiSeNetV2(nn.Module):
  """Detail branch + semantic branch + BGA; forward returns (stage1, .., stage4, bga)."""

  def __init__(self):
    super().__init__()
    self.detail = DetailBranch(DETAIL_CHANNELS, 3)
    self.semantic = SemanticBranch(SEMANTIC_CHANNELS, 3, EXPANSION)
    self.bga = BGALayer(BGA_CHANNELS)

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """'detail', 'stage1' .. 'stage4', 'ce', 'bga'."""
    feats = {'detail': self.detail(x)}
    *stages, ce = self.semantic(x)
    for i, stage in enumerate(stages):
      feats[f'stage{i + 1}'] = stage
    feats['ce'] = ce
    feats['bga'] = self.bga(feats['detail'], feats['ce'])
    return feats

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    feats = self.forward_features(x)
    return tuple(feats[name] for name in ('stage1', 'stage2', 'stage3', 'stage4', 'bga'))


# --------------------------------------------------------------------------------------------
# Segmentor (segmentors/fcn/fcn.py, segmentors/base/auxiliary.py)
# --------------------------------------------------------------------------------------------


def conv_head(
  cin: int, width: int, num_convs: int, num_classes: int, dropout: float
) -> nn.Sequential:
  """num_convs x (conv3x3 no bias -> BN -> ReLU) -> Dropout2d -> conv1x1 with bias.

  Both FCN's decoder and DefaultAuxiliaryDecoder have this layout.
  """
  layers = []
  for i in range(num_convs):
    layers += conv_bn_relu(cin if i == 0 else width, width, 3)
  layers += [nn.Dropout2d(dropout), nn.Conv2d(width, num_classes, 1)]
  return nn.Sequential(*layers)


class FCNBiSeNetV2(nn.Module):
  """The FCN segmentor: BiSeNetV2 backbone, main head on the BGA output, aux heads on stages 1-4.

  forward(x) in eval mode returns the main logits (N, K, ceil(H/8), ceil(W/8)) and skips the
  aux heads. In train mode it returns (logits, aux1, aux2, aux3, aux4) at strides 8, 4, 8, 16
  and 32 (aux_i is what sssegmentation's `loss_aux{i}` is computed on); nothing is upsampled
  (that, and the losses, belong to the task, not the model).
  """

  def __init__(self, num_classes: int = 19, dropout: float = 0.1):
    super().__init__()
    self.backbone_net = BiSeNetV2()
    self.decoder = conv_head(BGA_CHANNELS, HEAD_CHANNELS, 1, num_classes, dropout)
    self.auxiliary_decoder = nn.ModuleList(
      [conv_head(cin, cout, 2, num_classes, dropout) for cin, cout in AUX_CHANNELS]
    )

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named activations (NCHW) for per-block parity checks, keyed by FEATURE_NAMES:

    'detail'   detail-branch output                         (stride 8, 128 ch)
    'stage1'   StemBlock output (aux 1 input)               (stride 4, 16 ch)
    'stage2'   GE stage 2 output (aux 2 input)              (stride 8, 32 ch)
    'stage3'   GE stage 3 output (aux 3 input)              (stride 16, 64 ch)
    'stage4'   GE stage 4 output (aux 4 input, CE input)    (stride 32, 128 ch)
    'ce'       CE block output (BGA semantic input)         (stride 32, 128 ch)
    'bga'      BGA output (main head input)                 (stride 8, 128 ch)
    'logits'   main head output                             (stride 8, K ch)
    """
    feats = self.backbone_net.forward_features(x)
    feats['logits'] = self.decoder(feats['bga'])
    return feats

  def forward(self, x: torch.Tensor):
    feats = self.forward_features(x)
    if not self.training:
      return feats['logits']
    aux = tuple(head(feats[f'stage{i + 1}']) for i, head in enumerate(self.auxiliary_decoder))
    return (feats['logits'], *aux)


def build_reference(num_classes: int = 19, dropout: float = 0.1) -> FCNBiSeNetV2:
  """The official FCN + BiSeNetV2 segmentor, with PyTorch's default initialisation."""
  return FCNBiSeNetV2(num_classes, dropout)
