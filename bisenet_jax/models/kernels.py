"""CPU formulations of the models' heaviest operations, for speed only.

``conv2d`` (the hook ``nn.Conv`` calls) and ``max_pool_3x3_s2`` compute exactly what
``lax.conv_general_dilated`` and a reduce-window max would, and their gradients equal autodiff's
up to float rounding (tests/test_gradients.py). They exist because XLA's CPU backend runs the
automatic versions slowly on a segmentation network's large maps: its convolution gradients at
a fraction of the forward speed, the max-pool gradient as a select-and-scatter, and depthwise
(grouped) convolutions 5-20x slower forward and 5-50x slower backward than the same sums written
as shifted multiply-adds. Other backends keep XLA's own convolutions
(``jax.lax.platform_dependent``).

Exported files must hold the standard operators (an ONNX ``Conv`` with ``group``, not 9 slices),
and ``platform_dependent`` has no ONNX form: inside ``portable()`` every convolution is traced as
``lax.conv_general_dilated`` itself. ``portable(ops)`` also hands the size-dependent operations
(the 3x3 pools here, the resizes and adaptive pools of ``layers``) to ``ops``, a ``ShapeOps``:
the ONNX export passes operations that are written as ONNX ``MaxPool``, ``Resize``... computed
from the run-time shapes, so that the file runs at any image size.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')
# Bytes of im2col patches per chunk of output rows in the CPU kernel gradient: small enough that
# a chunk's patches are still in cache when its matmul reads them. 2-16 MiB all measured within
# 10 % of each other on R18's layers (2-core EPYC, 32 MiB L3); whole-map patches were 2-4x slower.
_IM2COL_CHUNK_BYTES = 8 * 2**20


class ShapeOps(Protocol):
  """The size-dependent operations of the models, as an exporter writes them.

  Each computes what the model's own function of the same name computes (PyTorch's
  semantics), but from the shapes its input has at run time rather than the traced ones.
  """

  def pool_3x3_s2(self, x: jax.Array, kind: str) -> jax.Array:
    """``max_pool_3x3_s2`` (kind 'max') or ``avg_pool_3x3_s2`` ('avg')."""

  def resize(self, x: jax.Array, size: tuple, method: str) -> jax.Array:
    """``layers.resize_nearest`` (method 'nearest') or ``layers.resize_bilinear`` ('linear')
    to ``size``, which may hold symbolic dimensions."""

  def adaptive_avg_pool(self, x: jax.Array, size: int) -> jax.Array:
    """``layers.adaptive_avg_pool`` (size > 1)."""


_PORTABLE = contextvars.ContextVar('portable', default=False)
_SHAPE_OPS: contextvars.ContextVar[ShapeOps | None] = contextvars.ContextVar('shape_ops',
                                                                             default=None)


@contextlib.contextmanager
def portable(ops: ShapeOps | None = None) -> Iterator[None]:
  """Trace convolutions as plain ``lax.conv_general_dilated`` (for exported files), and the
  size-dependent operations through ``ops`` when given."""
  tokens = _PORTABLE.set(True), _SHAPE_OPS.set(ops)
  try:
    yield
  finally:
    _PORTABLE.reset(tokens[0])
    _SHAPE_OPS.reset(tokens[1])


def shape_ops() -> ShapeOps | None:
  """The ``ShapeOps`` of the enclosing ``portable(ops)``, if any."""
  return _SHAPE_OPS.get()


def conv2d(x: jax.Array, kernel: jax.Array, window_strides: Sequence[int],
           padding: Sequence[tuple[int, int]], lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count: int = 1, precision=None) -> jax.Array:
  """``lax.conv_general_dilated`` for NHWC inputs and HWIO kernels, with CPU-tuned formulations.

  The signature is the one ``nn.Conv`` calls (its ``conv_general_dilated`` hook). Dense
  convolutions run XLA's forward pass, except unpadded 1x1 kernels, which are matrix products,
  and a CPU-tuned backward. Grouped convolutions must be depthwise (one group per input
  channel, any channel multiplier), as every grouped layer of these models is; on CPU they are
  window taps (``depthwise_conv2d``). Dilation, which no layer uses, is refused.
  """
  if any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
    raise ValueError('conv2d supports no dilation (no layer of these models uses it).')
  del dimension_numbers  # Always NHWC / HWIO here.
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  strides = tuple(int(s) for s in window_strides)
  if feature_group_count != 1:
    if feature_group_count != x.shape[-1]:
      raise ValueError('conv2d supports depthwise grouping only (groups == input channels).')
    standard = functools.partial(jax.lax.conv_general_dilated, window_strides=strides,
                                 padding=padding, dimension_numbers=_NHWC,
                                 feature_group_count=feature_group_count, precision=precision)
    if _PORTABLE.get():
      return standard(x, kernel)
    return jax.lax.platform_dependent(
        x, kernel, cpu=functools.partial(depthwise_conv2d, strides=strides, padding=padding),
        default=standard)
  if _PORTABLE.get():
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC,
                                        precision=precision)
  if kernel.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    return _pointwise_conv(x, kernel, strides, precision)
  return _conv2d(x, kernel, strides, padding, precision)


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                     padding: Sequence[tuple[int, int]]) -> jax.Array:
  """A depthwise convolution as the sum of its kh*kw shifted, scaled copies of the input.

  ``kernel`` is HWIO with I = 1 and O = multiplier * C: output channel o reads input channel
  o // multiplier (PyTorch's grouping, ``groups=C``). Each tap is a strided slice of the padded
  input times one kernel row; XLA fuses the taps into one pass over the input, and their
  gradients are slices and pads again, where XLA's CPU backend would run a grouped convolution
  (and its transposes) channel by channel.
  """
  kh, kw, _, out_channels = kernel.shape
  multiplier = out_channels // x.shape[-1]
  if multiplier > 1:  # Channel c feeds outputs c*m .. c*m + m - 1.
    x = jnp.repeat(x, multiplier, axis=-1)
  (top, bottom), (left, right) = padding
  padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  out_h = (padded.shape[1] - kh) // strides[0] + 1
  out_w = (padded.shape[2] - kw) // strides[1] + 1
  total = None
  for i in range(kh):
    for j in range(kw):
      window = jax.lax.slice(
          padded, (0, i, j, 0),
          (padded.shape[0], i + (out_h - 1) * strides[0] + 1, j + (out_w - 1) * strides[1] + 1,
           out_channels), (1, strides[0], strides[1], 1))
      term = window * kernel[i, j, 0]
      total = term if total is None else total + term
  return total


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
  (stride_h, stride_w), acc_dtype = strides, jnp.promote_types(x.dtype, jnp.float32)
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


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """MaxPool2d(3, stride=2, padding=1): padding acts like -inf, output side ceil(n / 2).

  The maximum of the nine strided window taps. The gradient goes to the first maximal tap in
  row-major window order, as PyTorch's max-pool backward does (ties are common after a ReLU).
  """
  ops = shape_ops()
  return _max_pool_3x3_s2(x) if ops is None else ops.pool_3x3_s2(x, 'max')


@jax.custom_vjp
def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  padded, out_hw = _pool_input(x)
  return functools.reduce(jnp.maximum, _pool_taps(padded, out_hw))


def _pool_input(x, fill=-jnp.inf):
  """x padded with ``fill``: 1 before, and after as far as the last window reaches."""
  out_hw = ((x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2)
  pads = ((0, 0), (1, 2 * out_hw[0] - x.shape[1]), (1, 2 * out_hw[1] - x.shape[2]), (0, 0))
  return jnp.pad(x, pads, constant_values=fill), out_hw


def _pool_taps(padded, out_hw):
  """The nine (N, out_h, out_w, C) views padded[:, i::2, j::2], row-major over (i, j)."""
  batch, _, _, channels = padded.shape
  return [jax.lax.slice(padded, (0, i, j, 0), (batch, i + 2 * out_hw[0] - 1,
                                               j + 2 * out_hw[1] - 1, channels), (1, 2, 2, 1))
          for i in range(3) for j in range(3)]


def _max_pool_fwd(x):
  y = _max_pool_3x3_s2(x)
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


_max_pool_3x3_s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def avg_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """AvgPool2d(3, stride=2, padding=1) with PyTorch's defaults (``ceil_mode=False``,
  ``count_include_pad=True``): zero padding counts, so every window divides by 9; output side
  ceil(n / 2). Autodiff's gradient (pads of the taps) is already fast on CPU."""
  ops = shape_ops()
  if ops is not None:
    return ops.pool_3x3_s2(x, 'avg')
  padded, out_hw = _pool_input(x, fill=0)
  return functools.reduce(jnp.add, _pool_taps(padded, out_hw)) / 9
