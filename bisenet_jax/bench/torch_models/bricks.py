"""Building blocks the PyTorch BiSeNetV2 and Fast-SCNN share, as sssegmentation's bricks define
them (``backbones/bricks/convolution/dsconv.py``) and with its conv/BN/ReLU Sequential layout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
  """Conv (no bias, padding kernel // 2) and BN, as two Sequential entries."""
  return [
    nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
    nn.BatchNorm2d(cout),
  ]


def conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list:
  """Conv (no bias) -> BN -> ReLU, as three Sequential entries."""
  return [*conv_bn(cin, cout, kernel, stride, groups), nn.ReLU()]


def resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
  return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


class DepthwiseSeparableConv2d(nn.Module):
  """3x3 depthwise conv -> [BN] -> [ReLU] -> 1x1 conv -> [BN] -> [ReLU], no conv biases.

  Optional parts exist as attributes only when enabled, as in the reference (keys
  `depthwise_bn`, `pointwise_bn`; activations have no keys).
  """

  def __init__(
    self,
    cin: int,
    cout: int,
    stride: int = 1,
    dw_norm: bool = True,
    dw_act: bool = True,
    pw_norm: bool = True,
    pw_act: bool = True,
  ):
    super().__init__()
    self.depthwise_conv = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
    if dw_norm:
      self.depthwise_bn = nn.BatchNorm2d(cin)
    if dw_act:
      self.depthwise_activate = nn.ReLU()
    self.pointwise_conv = nn.Conv2d(cin, cout, 1, bias=False)
    if pw_norm:
      self.pointwise_bn = nn.BatchNorm2d(cout)
    if pw_act:
      self.pointwise_activate = nn.ReLU()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.depthwise_conv(x)
    if hasattr(self, 'depthwise_bn'):
      x = self.depthwise_bn(x)
    if hasattr(self, 'depthwise_activate'):
      x = self.depthwise_activate(x)
    x = self.pointwise_conv(x)
    if hasattr(self, 'pointwise_bn'):
      x = self.pointwise_bn(x)
    if hasattr(self, 'pointwise_activate'):
      x = self.pointwise_activate(x)
    return x
