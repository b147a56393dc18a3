"""PyTorch-exact building blocks: convolution, BatchNorm, channel dropout and resizes (NHWC).

Every block here reproduces what the PyTorch reference computes, not merely its shapes:
explicit symmetric padding (never ``'SAME'``), BatchNorm whose running variance uses the
unbiased batch variance, floor-index nearest resize and half-pixel bilinear resize without
antialiasing. Parameter names follow PyTorch's so checkpoints convert by rule, not by table.

Convolutions run through ``kernels.conv2d``, which gives them a faster backward pass on CPU;
the values are the same.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bisenet_jax import resampling
from bisenet_jax.models import kernels

Dtype = Any
ModuleDef = Any


def at_least_float32(dtype: Dtype) -> Dtype:
  """The dtype for statistics and losses: float32 for bf16/fp16/fp32 inputs, float64 for float64."""
  return jnp.promote_types(dtype, jnp.float32)


def torch_uniform(fan_in: int) -> Callable:
  """PyTorch's default Conv2d init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for kernels and biases."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(features: int, kernel_size: int, strides: int = 1, *, use_bias: bool = False,
         in_features: int, groups: int = 1, name: str, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32) -> nn.Conv:
  """A Conv2d with PyTorch's padding (k // 2 on every side) and PyTorch's default init.

  ``in_features`` is only needed for the init bound; it must equal the input's channel count.
  ``groups`` as in PyTorch (only 1 or ``in_features``, depthwise, occur in these models).
  """
  pad = kernel_size // 2
  init = torch_uniform(in_features // groups * kernel_size * kernel_size)
  return nn.Conv(features, (kernel_size, kernel_size), (strides, strides),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                 use_bias=use_bias, kernel_init=init, bias_init=init, dtype=dtype,
                 param_dtype=param_dtype, name=name, conv_general_dilated=kernels.conv2d)


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch semantics over the last (channel) axis.

  Differences from ``flax.linen.BatchNorm`` that matter for parity:
  the running variance is updated with the *unbiased* batch variance (n / (n - 1)), as
  PyTorch does; normalisation uses the biased one. ``momentum`` is Flax-style
  (0.9 == PyTorch's 0.1).

  Under ``jax.jit`` with the batch sharded over a mesh, the batch statistics below are
  reductions over the *global* batch, so this is SyncBatchNorm without any ``axis_name``
  (which only ``shard_map``/``pmap`` code would need; this project uses neither).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    stats_dtype = at_least_float32(self.param_dtype)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), stats_dtype)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), stats_dtype)

    if train:
      mean, var, count = self._batch_moments(x)
      if not self.is_initializing():
        unbiased = var * (count / (count - 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = running_mean.value, running_var.value

    multiplier = scale.astype(mean.dtype) * jax.lax.rsqrt(var + self.epsilon)
    if train:
      return ((x - mean.astype(self.dtype)) * multiplier.astype(self.dtype)
              + bias.astype(self.dtype))
    # Fold normalisation and affine into one multiply-add per element.
    offset = bias.astype(mean.dtype) - mean * multiplier
    return x * multiplier.astype(self.dtype) + offset.astype(self.dtype)

  def _batch_moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array, int]:
    """Per-channel mean and biased variance over every axis but the last, in >= float32.

    Two passes, the mean first and then the mean squared deviation from it, numerically stable
    like PyTorch's Welford statistics. The one-pass E[x^2] - E[x]^2 loses the variance's low
    digits to cancellation when the mean is large against the spread (after a ReLU), which
    moved train-mode logits by ~2e-4 of their scale away from the reference. Under a sharded
    ``jax.jit`` each mean is one all-reduce over the global batch.
    """
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    if count < 2:
      raise ValueError(
          f'BatchNorm in training needs more than one value per channel, got input {x.shape}; '
          'use a global batch size of at least 2.')
    xf = x.astype(at_least_float32(x.dtype))
    mean = jnp.mean(xf, axes)
    var = jnp.mean(jnp.square(xf - mean), axes)
    return mean, var, count


class ConvNormModule(nn.Module):
  """Base for modules built of bias-free convs and BatchNorms, with ``dtype`` threaded through.

  Children are named by the caller with their PyTorch names (``'conv_layer.0'``), so the
  parameter tree mirrors the reference state dict.
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @property
  def dtypes(self) -> dict[str, Dtype]:
    """``dtype`` and ``param_dtype``, to pass on to child modules."""
    return {'dtype': self.dtype, 'param_dtype': self.param_dtype}

  def conv(self, features: int, kernel_size: int, strides: int = 1, *, in_features: int,
           name: str, use_bias: bool = False, groups: int = 1) -> nn.Conv:
    return conv(features, kernel_size, strides, use_bias=use_bias, in_features=in_features,
                groups=groups, name=name, dtype=self.dtype, param_dtype=self.param_dtype)

  def norm(self, name: str) -> BatchNorm:
    return BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def conv_bn(self, x: jax.Array, features: int, kernel_size: int, strides: int = 1, *,
              names: tuple[str, str], train: bool, groups: int = 1) -> jax.Array:
    """Conv (no bias) then BatchNorm, children named ``names = (conv_name, bn_name)``."""
    conv_name, bn_name = names
    x = self.conv(features, kernel_size, strides, in_features=x.shape[-1], groups=groups,
                  name=conv_name)(x)
    return self.norm(bn_name)(x, train)

  def conv_bn_relu(self, x: jax.Array, features: int, kernel_size: int, strides: int = 1, *,
                   names: tuple[str, str], train: bool, groups: int = 1) -> jax.Array:
    """``conv_bn`` then ReLU: the reference's Sequential(conv, BN, ReLU) at ``names``."""
    return relu(self.conv_bn(x, features, kernel_size, strides, names=names, train=train,
                             groups=groups))


class DepthwiseSeparableConv(ConvNormModule):
  """sssegmentation's DepthwiseSeparableConv2d: a depthwise kxk conv (stride here), then a 1x1.

  Each half has its own optional BatchNorm and ReLU (the reference's ``dw_norm_cfg``,
  ``dw_act_cfg``, ``pw_norm_cfg``, ``pw_act_cfg`` set or None); neither conv has a bias.
  Children ``depthwise_conv``, ``depthwise_bn``, ``pointwise_conv``, ``pointwise_bn``.
  """
  features: int = 128
  kernel_size: int = 3
  strides: int = 1
  depthwise_norm: bool = True
  depthwise_relu: bool = True
  pointwise_norm: bool = True
  pointwise_relu: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    channels = x.shape[-1]
    x = self.conv(channels, self.kernel_size, self.strides, in_features=channels,
                  groups=channels, name='depthwise_conv')(x)
    if self.depthwise_norm:
      x = self.norm('depthwise_bn')(x, train)
    if self.depthwise_relu:
      x = relu(x)
    x = self.conv(self.features, 1, in_features=channels, name='pointwise_conv')(x)
    if self.pointwise_norm:
      x = self.norm('pointwise_bn')(x, train)
    return relu(x) if self.pointwise_relu else x


def relu(x: jax.Array) -> jax.Array:
  return jax.nn.relu(x)


def channel_dropout(rate: float, name: str) -> nn.Dropout:
  """PyTorch's Dropout2d on NHWC: one keep/drop decision per (sample, channel)."""
  return nn.Dropout(rate, broadcast_dims=(1, 2), name=name)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """AdaptiveAvgPool2d(1) on NHWC, keeping the spatial axes (N, 1, 1, C)."""
  return jnp.mean(x, axis=(1, 2), keepdims=True)


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) averaging matrix of AdaptiveAvgPool along one axis.

  PyTorch's bins: output i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1,
  so bins overlap when ``in_size`` is not a multiple of ``out_size`` (and repeat inputs when it
  is smaller).
  """
  matrix = np.zeros((out_size, in_size))  # float64: exact enough for float64 models too.
  for i in range(out_size):
    start, end = (i * in_size) // out_size, -(-((i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """AdaptiveAvgPool2d(size) on NHWC: (N, H, W, C) -> (N, size, size, C)."""
  if size == 1:
    return global_avg_pool(x)
  if (ops := kernels.shape_ops()) is not None:
    return ops.adaptive_avg_pool(x, size)
  rows, cols = (jnp.asarray(adaptive_pool_matrix(n, size), x.dtype) for n in x.shape[1:3])
  return jnp.einsum('ih,nhwc,jw->nijc', rows, x, cols)


@functools.lru_cache(maxsize=None)
def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  # PyTorch's legacy 'nearest': src = min(floor(dst * (in / out)), in - 1), scale in float32.
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(src, in_size - 1)


def _resize_axis_nearest(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  in_size = x.shape[axis]
  if out_size == in_size:
    return x
  if out_size % in_size == 0:  # Exact integer factor: a repeat, cheaper than a gather.
    return jnp.repeat(x, out_size // in_size, axis=axis)
  return jnp.take(x, jnp.asarray(_nearest_indices(in_size, out_size)), axis=axis)


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """F.interpolate(x, size, mode='nearest') on NHWC, exact for any sizes."""
  if (ops := kernels.shape_ops()) is not None:
    return ops.resize(x, tuple(size), 'nearest')
  x = _resize_axis_nearest(x, 1, size[0])
  return _resize_axis_nearest(x, 2, size[1])


@functools.lru_cache(maxsize=None)
def linear_resize_matrix(in_size: int, out_size: int, dtype=np.float32) -> np.ndarray:
  """The (out_size, in_size) matrix of ``resize_bilinear`` along one axis, for a tensor of
  ``dtype`` (float64 weights for float64, else float32: ``resampling.linear_taps``).

  Row o holds PyTorch's two align_corners=False taps for output pixel o (weights summing to 1),
  so ``matrix @ x`` along an axis is that axis' interpolation; the other entries are exact
  zeros. Useful where a matmul beats a gather, e.g. for the backward pass (a matmul with the
  transpose instead of a scatter-add).
  """
  lo, hi, weight_hi = resampling.linear_taps(in_size, out_size, dtype)
  matrix = np.zeros((out_size, in_size), weight_hi.dtype)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), 1 - weight_hi)
  np.add.at(matrix, (rows, hi), weight_hi)
  return matrix


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """F.interpolate(x, size, mode='bilinear', align_corners=False) on NHWC.

  Two taps per output pixel and axis, as PyTorch, with no antialiasing when shrinking
  (``jax.image.resize`` antialiases by default and builds dense weight matrices).
  """
  if (ops := kernels.shape_ops()) is not None:
    return ops.resize(x, tuple(size), 'linear')
  # Width first, then height: PyTorch's order of the two interpolations.
  x = resampling.resize_axis_linear(x, 2, size[1], xp=jnp)
  return resampling.resize_axis_linear(x, 1, size[0], xp=jnp)
