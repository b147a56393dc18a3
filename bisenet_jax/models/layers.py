"""PyTorch-exact building blocks: convolution, BatchNorm, channel dropout and resizes (NHWC).

Every block here reproduces what the PyTorch reference computes, not merely its shapes:
explicit symmetric padding (never ``'SAME'``), BatchNorm whose running variance uses the
unbiased batch variance, floor-index nearest resize and half-pixel bilinear resize without
antialiasing. Parameter names follow PyTorch's so checkpoints convert by rule, not by table.

Two blocks carry a hand-written backward pass, for speed only (the values are the autodiff ones
up to float rounding): ``conv2d`` (on CPU, XLA's own convolution gradients run at a fraction of
its forward speed on the large maps of a segmentation network; other backends keep XLA's) and
``max_pool_3x3_s2`` (XLA's reduce-window gradient is a slow select-and-scatter on CPU).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
         in_features: int, name: str, dtype: Dtype = jnp.float32,
         param_dtype: Dtype = jnp.float32) -> nn.Conv:
  """A Conv2d with PyTorch's padding (k // 2 on every side) and PyTorch's default init.

  ``in_features`` is only needed for the init bound; it must equal the input's channel count.
  """
  pad = kernel_size // 2
  init = torch_uniform(in_features * kernel_size * kernel_size)
  return nn.Conv(features, (kernel_size, kernel_size), (strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, kernel_init=init,
                 bias_init=init, dtype=dtype, param_dtype=param_dtype, name=name,
                 conv_general_dilated=conv2d)


_NHWC = ('NHWC', 'HWIO', 'NHWC')
# Bytes of im2col patches per chunk of output rows in the CPU kernel gradient: small enough that
# a chunk's patches are still in cache when its matmul reads them. 2-16 MiB all measured within
# 10 % of each other on R18's layers (2-core EPYC, 32 MiB L3); whole-map patches were 2-4x slower.
_IM2COL_CHUNK_BYTES = 8 * 2**20


def conv2d(x: jax.Array, kernel: jax.Array, window_strides: Sequence[int],
           padding: Sequence[tuple[int, int]], lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count: int = 1, precision=None) -> jax.Array:
  """``lax.conv_general_dilated`` for NHWC inputs and HWIO kernels, with a CPU-tuned backward.

  The signature is the one ``nn.Conv`` calls (its ``conv_general_dilated`` hook). The forward
  pass is XLA's convolution, except for unpadded 1x1 kernels, which are matrix products.
  Dilation and feature groups, which no layer here uses, are refused.
  """
  if any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    raise ValueError('conv2d supports no dilation (no layer of this model uses it).')
  if feature_group_count != 1:
    raise ValueError('conv2d supports no feature groups (no layer of this model uses them).')
  del dimension_numbers  # Always NHWC / HWIO here.
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  strides = tuple(int(s) for s in window_strides)
  if kernel.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    return _pointwise_conv(x, kernel, strides, precision)
  return _conv2d(x, kernel, strides, padding, precision)


def _pointwise_conv(x, kernel, strides, precision):
  """A 1x1 convolution as the matrix product it is: [N, H, W, Cin] x [Cin, Cout].

  XLA's CPU convolution runs this model's 1x1 kernels at 17-100 GFLOP/s (17 for the 256->19
  classifier), its matrix product at 150-200; the product's gradients are matrix products too.
  """
  x = x[:, ::strides[0], ::strides[1]]
  return jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())), precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, kernel, strides, padding, precision):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                      precision=precision)


def _conv2d_fwd(x, kernel, strides, padding, precision):
  return _conv2d(x, kernel, strides, padding, precision), (x, kernel)


def _conv2d_bwd(strides, padding, precision, residuals, grad):
  x, kernel = residuals
  # XLA's transpose rules everywhere but on CPU, where the formulations below are faster.
  return jax.lax.platform_dependent(
      x, kernel, grad, cpu=functools.partial(_conv_grads_cpu, strides, padding, precision),
      default=functools.partial(_conv_grads_xla, strides, padding, precision))


def _conv_grads_xla(strides, padding, precision, x, kernel, grad):
  forward = functools.partial(jax.lax.conv_general_dilated, window_strides=strides,
                              padding=padding, dimension_numbers=_NHWC, precision=precision)
  return jax.vjp(forward, x, kernel)[1](grad)


def _conv_grads_cpu(strides, padding, precision, x, kernel, grad):
  return (_input_grad_cpu(strides, padding, precision, x, kernel, grad),
          _kernel_grad_cpu(strides, padding, precision, x, kernel, grad))


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _input_grad_cpu(strides, padding, precision, x, kernel, grad):
  """Input gradient; strided kxk convs use the sub-pixel form, the rest XLA's transpose."""
  kh, kw = kernel.shape[:2]
  if strides[0] == strides[1] > 1 and (kh, kw) != (1, 1):
    return _strided_input_grad(grad, kernel, strides[0], padding, x.shape[1:3], precision)
  forward = lambda x: jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                                   dimension_numbers=_NHWC, precision=precision)
  return jax.vjp(forward, x)[1](grad)[0]


def _strided_input_grad(grad, kernel, stride, padding, in_hw, precision):
  """Input gradient of a stride-s conv as ONE stride-1 conv giving s*s phase planes.

  Padded input row s*u + r receives ``sum_q grad[u - q] * kernel[r + s*q]``: for each phase r
  a stride-1 correlation of the gradient with the flipped sub-kernel ``kernel[r::s]``. All
  phases come out of one convolution with s*s times the input channels (sub-kernels
  zero-padded to ceil(k/s) taps), then interleave back (depth-to-space). XLA's own transpose
  convolves a zero-dilated gradient instead, which its CPU backend runs 2-4x slower.
  """
  s = stride
  kh, kw, cin, cout = kernel.shape
  batch, out_h, out_w, _ = grad.shape
  (pad_h, _), (pad_w, _) = padding
  taps_h, taps_w = -(-kh // s), -(-kw // s)
  # Number of padded input rows/columns of each phase.
  rows, cols = -(-(in_hw[0] + 2 * pad_h) // s), -(-(in_hw[1] + 2 * pad_w) // s)
  sub = jnp.pad(kernel, ((0, s * taps_h - kh), (0, s * taps_w - kw), (0, 0), (0, 0)))
  sub = sub.reshape(taps_h, s, taps_w, s, cin, cout)[::-1, :, ::-1]  # [q_h, r_h, q_w, r_w, ...]
  sub = sub.transpose(0, 2, 5, 1, 3, 4).reshape(taps_h, taps_w, cout, s * s * cin)
  padded = jnp.pad(grad, ((0, 0), (taps_h - 1, max(0, rows - out_h)),
                          (taps_w - 1, max(0, cols - out_w)), (0, 0)))
  phases = jax.lax.conv_general_dilated(padded, sub, (1, 1), 'VALID', dimension_numbers=_NHWC,
                                        precision=precision)[:, :rows, :cols]
  dx = phases.reshape(batch, rows, cols, s, s, cin).transpose(0, 1, 3, 2, 4, 5)
  dx = dx.reshape(batch, s * rows, s * cols, cin)
  return dx[:, pad_h:pad_h + in_hw[0], pad_w:pad_w + in_hw[1]]


def _kernel_grad_cpu(strides, padding, precision, x, kernel, grad):
  """Kernel gradient as im2col matmuls, (kh*kw*Cin x rows) @ (rows x Cout), summed over chunks.

  XLA's own kernel gradient is a convolution whose "kernel" is the whole output gradient, which
  its CPU backend runs at 20-60 GFLOP/s on large maps (plus layout transposes). Here the output
  rows are taken in chunks (``_IM2COL_CHUNK_BYTES``): each chunk's kh*kw strided windows of the
  padded input are stacked into a patch matrix, multiplied with the chunk's gradient rows, and
  the products summed: 2-4x faster on R18's large early layers, on par on the small late ones.
  """
  kh, kw, cin, cout = kernel.shape
  batch, out_h, out_w, _ = grad.shape
  (stride_h, stride_w), acc_dtype = strides, at_least_float32(x.dtype)
  row_bytes = batch * out_w * kh * kw * cin * x.dtype.itemsize
  chunks = -(-out_h // max(1, _IM2COL_CHUNK_BYTES // row_bytes))
  rows = -(-out_h // chunks)
  # Gradient rows past the end are zeros and add nothing; the input is padded to match them.
  grad = jnp.pad(grad, ((0, 0), (0, chunks * rows - out_h), (0, 0), (0, 0)))
  (top, bottom), (left, right) = padding
  bottom = max(bottom, (chunks * rows - 1) * stride_h + kh - top - x.shape[1])
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))

  def add_chunk(total, chunk):
    inputs = jax.lax.dynamic_slice_in_dim(padded, chunk * rows * stride_h,
                                          (rows - 1) * stride_h + kh, axis=1)
    windows = [jax.lax.slice(inputs, (0, i, j, 0),
                             (batch, i + (rows - 1) * stride_h + 1,
                              j + (out_w - 1) * stride_w + 1, cin), (1, stride_h, stride_w, 1))
               for i in range(kh) for j in range(kw)]
    patches = jnp.stack(windows, axis=3).reshape(-1, kh * kw * cin)
    grads = jax.lax.dynamic_slice_in_dim(grad, chunk * rows, rows, axis=1).reshape(-1, cout)
    return total + jax.lax.dot_general(patches, grads, (((0,), (0,)), ((), ())),
                                       precision=precision, preferred_element_type=acc_dtype), None

  total, _ = jax.lax.scan(add_chunk, jnp.zeros((kh * kw * cin, cout), acc_dtype),
                          jnp.arange(chunks))
  return total.reshape(kernel.shape).astype(kernel.dtype)


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch semantics over the last (channel) axis.

  Differences from ``flax.linen.BatchNorm`` that matter for parity:
  the running variance is updated with the *unbiased* batch variance (n / (n - 1)), as
  PyTorch does; normalisation uses the biased one. ``momentum`` is Flax-style
  (0.9 == PyTorch's 0.1).

  Under ``jax.jit`` with the batch sharded over a mesh, the batch statistics below are
  reductions over the *global* batch, so this is SyncBatchNorm without any ``axis_name``.
  ``axis_name`` is only needed inside ``shard_map``/``pmap``.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  axis_name: str | None = None

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

    # Fold normalisation and affine into one multiply-add per element.
    multiplier = scale.astype(mean.dtype) * jax.lax.rsqrt(var + self.epsilon)
    offset = bias.astype(mean.dtype) - mean * multiplier
    return x * multiplier.astype(self.dtype) + offset.astype(self.dtype)

  def _batch_moments(self, x: jax.Array) -> tuple[jax.Array, jax.Array, int]:
    """Per-channel mean and biased variance over every axis but the last, in >= float32."""
    axes = tuple(range(x.ndim - 1))
    count = math.prod(x.shape[:-1])
    xf = x.astype(at_least_float32(x.dtype))
    mean = jnp.mean(xf, axes)
    mean_sq = jnp.mean(jnp.square(xf), axes)
    if self.axis_name is not None:
      mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
      count *= jax.lax.psum(1, self.axis_name)
    if count < 2:
      raise ValueError(
          f'BatchNorm in training needs more than one value per channel, got input {x.shape}; '
          'use a global batch size of at least 2.')
    # E[x^2] - E[x]^2 in float32 is accurate here: activations after conv are O(1) and the
    # two-pass form would cost a second read of every activation in the backward pass.
    var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
    return mean, var, count


class ConvNormModule(nn.Module):
  """Base for modules built of bias-free convs and BatchNorms, with ``dtype`` threaded through.

  Children are named by the caller with their PyTorch names (``'conv_layer.0'``), so the
  parameter tree mirrors the reference state dict.
  """
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def conv(self, features: int, kernel_size: int, strides: int = 1, *, in_features: int,
           name: str, use_bias: bool = False) -> nn.Conv:
    return conv(features, kernel_size, strides, use_bias=use_bias, in_features=in_features,
                name=name, dtype=self.dtype, param_dtype=self.param_dtype)

  def norm(self, name: str) -> BatchNorm:
    return BatchNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def conv_bn(self, x: jax.Array, features: int, kernel_size: int, strides: int = 1, *,
              names: tuple[str, str], train: bool) -> jax.Array:
    """Conv (no bias) then BatchNorm, children named ``names = (conv_name, bn_name)``."""
    conv_name, bn_name = names
    x = self.conv(features, kernel_size, strides, in_features=x.shape[-1], name=conv_name)(x)
    return self.norm(bn_name)(x, train)


def relu(x: jax.Array) -> jax.Array:
  return jax.nn.relu(x)


def channel_dropout(rate: float, name: str) -> nn.Dropout:
  """PyTorch's Dropout2d on NHWC: one keep/drop decision per (sample, channel)."""
  return nn.Dropout(rate, broadcast_dims=(1, 2), name=name)


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """MaxPool2d(3, stride=2, padding=1): padding acts like -inf, output side ceil(n / 2).

  The maximum of the nine strided window taps. The gradient goes to the first maximal tap in
  row-major window order, as PyTorch's max-pool backward does (ties are common after a ReLU).
  """
  padded, out_hw = _pool_input(x)
  return functools.reduce(jnp.maximum, _pool_taps(padded, out_hw))


def _pool_input(x):
  """x padded with -inf: 1 before, and after as far as the last window reaches."""
  out_hw = ((x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2)
  pads = ((0, 0), (1, 2 * out_hw[0] - x.shape[1]), (1, 2 * out_hw[1] - x.shape[2]), (0, 0))
  return jnp.pad(x, pads, constant_values=-jnp.inf), out_hw


def _pool_taps(padded, out_hw):
  """The nine (N, out_h, out_w, C) views padded[:, i::2, j::2], row-major over (i, j)."""
  batch, _, _, channels = padded.shape
  return [jax.lax.slice(padded, (0, i, j, 0), (batch, i + 2 * out_hw[0] - 1,
                                               j + 2 * out_hw[1] - 1, channels), (1, 2, 2, 1))
          for i in range(3) for j in range(3)]


def _max_pool_fwd(x):
  y = max_pool_3x3_s2(x)
  return y, (x, y)


def _max_pool_bwd(residuals, grad):
  x, y = residuals
  padded, out_hw = _pool_input(x)
  taken = jnp.zeros(y.shape, bool)
  dpadded = jnp.zeros(padded.shape, grad.dtype)
  zero = jnp.zeros((), grad.dtype)
  for index, tap in enumerate(_pool_taps(padded, out_hw)):
    i, j = divmod(index, 3)
    first = (tap == y) & ~taken
    taken = taken | first
    # Scatter back to padded[:, i::2, j::2]: a pad with interior (stride) padding.
    dpadded = dpadded + jax.lax.pad(jnp.where(first, grad, zero), zero, (
        (0, 0, 0), (i, padded.shape[1] - i - 2 * out_hw[0] + 1, 1),
        (j, padded.shape[2] - j - 2 * out_hw[1] + 1, 1), (0, 0, 0)))
  return (dpadded[:, 1:1 + x.shape[1], 1:1 + x.shape[2]],)


max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """AdaptiveAvgPool2d(1) on NHWC, keeping the spatial axes (N, 1, 1, C)."""
  return jnp.mean(x, axis=(1, 2), keepdims=True)


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
  x = _resize_axis_nearest(x, 1, size[0])
  return _resize_axis_nearest(x, 2, size[1])


@functools.lru_cache(maxsize=None)
def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  # PyTorch's align_corners=False source index: (dst + 0.5) * in / out - 0.5, clamped at 0.
  scale = np.float32(in_size) / np.float32(out_size)
  src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
  src = np.maximum(src, np.float32(0))
  lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  weight_hi = (src - lo).astype(np.float32)
  return lo, hi, weight_hi


def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The (out_size, in_size) float32 matrix of ``resize_bilinear`` along one axis.

  Row o holds PyTorch's two align_corners=False taps for output pixel o (weights summing to 1),
  so ``matrix @ x`` along an axis is that axis' interpolation; the other entries are exact
  zeros. Useful where a matmul beats a gather, e.g. for the backward pass (a matmul with the
  transpose instead of a scatter-add).
  """
  lo, hi, weight_hi = _linear_taps(in_size, out_size)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), 1 - weight_hi)
  np.add.at(matrix, (rows, hi), weight_hi)
  return matrix


def _resize_axis_linear(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  in_size = x.shape[axis]
  if out_size == in_size:
    return x
  lo, hi, weight_hi = _linear_taps(in_size, out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight_lo = jnp.asarray(1 - weight_hi, x.dtype).reshape(shape)
  weight_hi = jnp.asarray(weight_hi, x.dtype).reshape(shape)
  return (jnp.take(x, jnp.asarray(lo), axis=axis) * weight_lo +
          jnp.take(x, jnp.asarray(hi), axis=axis) * weight_hi)


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """F.interpolate(x, size, mode='bilinear', align_corners=False) on NHWC.

  Two taps per output pixel and axis, as PyTorch, with no antialiasing when shrinking
  (``jax.image.resize`` antialiases by default and builds dense weight matrices).
  """
  # Width first, then height: PyTorch's order of the two interpolations.
  x = _resize_axis_linear(x, 2, size[1])
  return _resize_axis_linear(x, 1, size[0])
