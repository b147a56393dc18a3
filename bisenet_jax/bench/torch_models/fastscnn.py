"""A PyTorch DepthwiseSeparableFCN + Fast-SCNN, transcribed from sssegmentation 1.7.0's source:
the PyTorch side of the benchmark and the second implementation the tests check the Flax
Fast-SCNN against.

It follows ``ssseg/modules/models/backbones/fastscnn.py`` (PoolingPyramidModule,
LearningToDownsample, GlobalFeatureExtractor, FeatureFusionModule),
``backbones/bricks/convolution/dsconv.py`` (DepthwiseSeparableConv2d) and ``irconv.py``
(InvertedResidual), ``segmentors/fcn/fcn.py`` (DepthwiseSeparableFCN),
``segmentors/base/auxiliary.py`` (DefaultAuxiliaryDecoder) and ``segmentors/base/base.py``
(which backbone output feeds which auxiliary head), with the settings of
``configs/_base_/segmentors/fastscnn.py``: main head 128 -> 128 with two depthwise-separable
convs, two auxiliary heads (64 -> 32 on the learning-to-downsample output, 128 -> 32 on the
global feature extractor's) with one conv each, dropout 0.1, ``align_corners=False``, backbone
outputs (0, 1, 2). It does not import sssegmentation.

Quirks of the reference it keeps, because a port that "fixes" them computes something else:

- The pyramid pooling uses ``AdaptiveAvgPool2d`` with bins 1, 2, 3, 6 on the stride-32 map, whose
  bins overlap or repeat pixels when the map is not a multiple of the bin count (at a 64x64
  input the map is 2x2, smaller than the 3 and 6 bins). Each branch is a 1x1 Conv-BN-ReLU
  (128 -> 32) resized back; the concatenation puts the input first: [x, p1, p2, p3, p6].
- The feature fusion's ``dwconv`` is a 3x3 depthwise Conv-BN-ReLU applied after upsampling
  the low-resolution features; its two 1x1 projections have BN and no activation before the
  sum, which is followed by one ReLU.
- The depthwise-separable convs (learning to downsample and the head) have BN and ReLU after both
  the depthwise and the pointwise conv. The inverted residuals have no activation after their
  last 1x1 projection and add the input only when stride is 1 and the widths match (not in the
  first block of each bottleneck).
- Every resize is bilinear with ``size=`` (the target map's shape) and ``align_corners=False``.

Module and attribute names mirror the official state-dict keys and are registered in the order
that makes ``state_dict()`` list keys exactly as the real package
(``tests/data/ssseg_depthwiseseparablefcn_fastscnn_state_dict.txt``). BatchNorm is plain
``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1), which has the same keys as the SyncBatchNorm used
in training. ReLUs are not in-place so that the tensors returned by ``forward_features`` are
never overwritten by a later layer.

Entry point: ``build_reference(num_classes=19, dropout=0.1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from bisenet_jax.bench.torch_models.bricks import (DepthwiseSeparableConv2d, conv_bn, conv_bn_relu,
                                                  resize)

DOWNSAMPLE_CHANNELS = (32, 48)
GLOBAL_IN_CHANNELS = 64
BLOCK_CHANNELS = (64, 96, 128)
BLOCK_STRIDES = (2, 2, 1)
NUM_BLOCKS = (3, 3, 3)
EXPAND_RATIO = 6
POOL_SCALES = (1, 2, 3, 6)
GLOBAL_OUT_CHANNELS = 128
FUSION_CHANNELS = 128
HEAD_CHANNELS = 128
# (in, out) channels of the auxiliary heads, fed the learning-to-downsample output and the global
# feature extractor output (loss_aux1, loss_aux2).
AUX_CHANNELS = ((64, 32), (128, 32))

# Names of the activations returned by `DepthwiseSeparableFCNFastSCNN.forward_features`, in
# forward order.
FEATURE_NAMES = (
  'higher_res',
  'bottleneck1',
  'bottleneck2',
  'bottleneck3',
  'ppm',
  'lower_res',
  'fusion',
  'logits',
)


def _named_conv(
  cin: int, cout: int, kernel: int, stride: int, groups: int, act: bool
) -> nn.Sequential:
  """Conv (no bias) -> BN [-> ReLU] as a Sequential with children `conv`, `bn`, `activation`."""
  layer = nn.Sequential()
  layer.add_module(
    'conv', nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
  )
  layer.add_module('bn', nn.BatchNorm2d(cout))
  if act:
    layer.add_module('activation', nn.ReLU())
  return layer


class InvertedResidual(nn.Module):
  """MobileNetV2 block: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 project, no final ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
    super().__init__()
    self.use_res_connect = stride == 1 and cin == cout
    hidden = int(round(cin * expand_ratio))
    layers = []
    if expand_ratio != 1:
      layers.append(_named_conv(cin, hidden, 1, 1, 1, act=True))
    layers.append(_named_conv(hidden, hidden, 3, stride, hidden, act=True))
    layers.append(_named_conv(hidden, cout, 1, 1, 1, act=False))
    self.conv = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.use_res_connect:
      return x + self.conv(x)
    return self.conv(x)


class PoolingPyramidModule(nn.ModuleList):
  """One AdaptiveAvgPool(bin) -> 1x1 Conv-BN-ReLU branch per bin; returns them resized to x."""

  def __init__(self, pool_scales: tuple[int, ...], cin: int, cout: int):
    super().__init__()
    for scale in pool_scales:
      self.append(nn.Sequential(nn.AdaptiveAvgPool2d(scale), *conv_bn_relu(cin, cout, 1)))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    return [resize(branch(x), x.shape[2:]) for branch in self]


class LearningToDownsample(nn.Module):
  """conv3x3/s2 -> two stride-2 depthwise-separable convs (output stride 8)."""

  def __init__(
    self,
    cin: int = 3,
    dw_channels: tuple[int, int] = DOWNSAMPLE_CHANNELS,
    cout: int = GLOBAL_IN_CHANNELS,
  ):
    super().__init__()
    dw1, dw2 = dw_channels
    self.conv = nn.Sequential(*conv_bn_relu(cin, dw1, 3, 2))
    self.dsconv1 = DepthwiseSeparableConv2d(dw1, dw2, 2)
    self.dsconv2 = DepthwiseSeparableConv2d(dw2, cout, 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.dsconv2(self.dsconv1(self.conv(x)))


class GlobalFeatureExtractor(nn.Module):
  """Three inverted-residual bottlenecks (strides 2, 2, 1), pyramid pooling, 3x3 Conv-BN-ReLU."""

  def __init__(self):
    super().__init__()
    cin = GLOBAL_IN_CHANNELS
    for i, (cout, n, stride) in enumerate(zip(BLOCK_CHANNELS, NUM_BLOCKS, BLOCK_STRIDES)):
      blocks = [InvertedResidual(cin, cout, stride, EXPAND_RATIO)]
      blocks += [InvertedResidual(cout, cout, 1, EXPAND_RATIO) for _ in range(n - 1)]
      self.add_module(f'bottleneck{i + 1}', nn.Sequential(*blocks))
      cin = cout
    self.ppm = PoolingPyramidModule(POOL_SCALES, cin, cin // 4)
    self.out = nn.Sequential(*conv_bn_relu(cin * 2, GLOBAL_OUT_CHANNELS, 3))

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """'bottleneck1' .. 'bottleneck3', 'ppm' (the concatenation), 'lower_res' (the output)."""
    feats = {}
    for i in range(1, 4):
      feats[f'bottleneck{i}'] = x = getattr(self, f'bottleneck{i}')(x)
    feats['ppm'] = torch.cat([x, *self.ppm(x)], dim=1)
    feats['lower_res'] = self.out(feats['ppm'])
    return feats

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.forward_features(x)['lower_res']


class FeatureFusionModule(nn.Module):
  """ReLU(BN(1x1(higher)) + BN(1x1(DWConvBNReLU(resize(lower, higher's size)))))."""

  def __init__(
    self,
    higher_in: int = GLOBAL_IN_CHANNELS,
    lower_in: int = GLOBAL_OUT_CHANNELS,
    cout: int = FUSION_CHANNELS,
  ):
    super().__init__()
    self.dwconv = nn.Sequential(*conv_bn_relu(lower_in, cout, 3, groups=cout))
    self.conv_lower_res = nn.Sequential(*conv_bn(cout, cout, 1))
    self.conv_higher_res = nn.Sequential(*conv_bn(higher_in, cout, 1))
    self.act = nn.ReLU()

  def forward(self, higher: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    lower = self.conv_lower_res(self.dwconv(resize(lower, higher.shape[2:])))
    return self.act(self.conv_higher_res(higher) + lower)


class FastSCNN(nn.Module):
  """Learning to downsample + extractor + fusion; forward returns (higher, lower, fusion)."""

  def __init__(self):
    super().__init__()
    self.learning_to_downsample = LearningToDownsample()
    self.global_feature_extractor = GlobalFeatureExtractor()
    self.feature_fusion = FeatureFusionModule()

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """'higher_res', the global feature extractor's activations, 'fusion'."""
    feats = {'higher_res': self.learning_to_downsample(x)}
    feats.update(self.global_feature_extractor.forward_features(feats['higher_res']))
    feats['fusion'] = self.feature_fusion(feats['higher_res'], feats['lower_res'])
    return feats

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    feats = self.forward_features(x)
    return feats['higher_res'], feats['lower_res'], feats['fusion']


# --------------------------------------------------------------------------------------------
# Segmentor (segmentors/fcn/fcn.py, segmentors/base/auxiliary.py)
# --------------------------------------------------------------------------------------------


def aux_head(cin: int, width: int, num_classes: int, dropout: float) -> nn.Sequential:
  """One-conv DefaultAuxiliaryDecoder: conv3x3 -> BN -> ReLU -> Dropout2d -> conv1x1 (bias)."""
  return nn.Sequential(
    *conv_bn_relu(cin, width, 3), nn.Dropout2d(dropout), nn.Conv2d(width, num_classes, 1)
  )


class DepthwiseSeparableFCNFastSCNN(nn.Module):
  """The DepthwiseSeparableFCN segmentor on Fast-SCNN: main head on the fusion output, aux heads
  on the learning-to-downsample output and the global feature extractor output.

  forward(x) in eval mode returns the main logits (N, K, ceil(H/8), ceil(W/8)) and skips the
  aux heads. In train mode it returns (logits, aux1, aux2) at strides 8, 8 and 32 (aux_i is
  what sssegmentation's `loss_aux{i}` is computed on); nothing is upsampled (that, and the
  losses, belong to the task, not the model).
  """

  def __init__(self, num_classes: int = 19, dropout: float = 0.1):
    super().__init__()
    self.backbone_net = FastSCNN()
    self.decoder = nn.Sequential(
      DepthwiseSeparableConv2d(FUSION_CHANNELS, HEAD_CHANNELS),
      DepthwiseSeparableConv2d(HEAD_CHANNELS, HEAD_CHANNELS),
      nn.Dropout2d(dropout),
      nn.Conv2d(HEAD_CHANNELS, num_classes, 1),
    )
    self.auxiliary_decoder = nn.ModuleList(
      [aux_head(cin, cout, num_classes, dropout) for cin, cout in AUX_CHANNELS]
    )

  def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Named activations (NCHW) for per-block parity checks, keyed by FEATURE_NAMES:

    'higher_res'   learning-to-downsample output (aux 1 input)     (stride 8, 64 ch)
    'bottleneck1'  first inverted-residual stage                   (stride 16, 64 ch)
    'bottleneck2'  second inverted-residual stage                  (stride 32, 96 ch)
    'bottleneck3'  third inverted-residual stage (PPM input)       (stride 32, 128 ch)
    'ppm'          [bottleneck3, p1, p2, p3, p6] concatenated       (stride 32, 256 ch)
    'lower_res'    global feature extractor output (aux 2 input)   (stride 32, 128 ch)
    'fusion'       feature-fusion output (main head input)         (stride 8, 128 ch)
    'logits'       main head output                                (stride 8, K ch)
    """
    feats = self.backbone_net.forward_features(x)
    feats['logits'] = self.decoder(feats['fusion'])
    return feats

  def forward(self, x: torch.Tensor):
    feats = self.forward_features(x)
    if not self.training:
      return feats['logits']
    aux1 = self.auxiliary_decoder[0](feats['higher_res'])
    aux2 = self.auxiliary_decoder[1](feats['lower_res'])
    return feats['logits'], aux1, aux2


def build_reference(num_classes: int = 19, dropout: float = 0.1) -> DepthwiseSeparableFCNFastSCNN:
  """The official DepthwiseSeparableFCN + Fast-SCNN segmentor, PyTorch's default init."""
  return DepthwiseSeparableFCNFastSCNN(num_classes, dropout)
