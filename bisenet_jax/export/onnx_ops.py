"""The models' size-dependent operations as ONNX operators computed from run-time shapes.

An ONNX file runs the network at each image's own size. jax2onnx traces the model with symbolic
height and width (``jax.export`` shape polymorphism: every convolution's output size is then a
symbolic expression of H and W, which jax2onnx writes as ``Shape`` arithmetic where it needs
it). What cannot be traced symbolically is the models' own formulation of the operations whose
arithmetic depends on the sizes: PyTorch's nearest-resize indices, the bilinear taps and the
adaptive-pooling bins are NumPy constants computed from static shapes, and the 3x3 pools are
strided slices of a padded map. Inside ``kernels.portable(SHAPE_OPS)`` the models call the
primitives below for them instead, and the plugins registered here write each as the standard
ONNX operator with the same semantics:

* ``resize``, method 'nearest' (BiSeNetV1's context path): ``Resize`` mode nearest,
  ``asymmetric`` coordinates, ``nearest_mode=floor``: source index floor(dst * in / out), PyTorch's
  legacy nearest. ONNX divides by out / in where PyTorch multiplies by in / out (both float32):
  they can only differ where dst * in / out is within float rounding of an integer without being
  one, which the networks' resizes (from ceil(n / 32) to ceil(n / 16), and the like) never meet.
* ``resize``, method 'linear' (BiSeNetV2's aggregation, Fast-SCNN's pyramid and fusion):
  ``Resize`` mode linear, ``half_pixel``: PyTorch's bilinear with align_corners=False, source
  coordinate (dst + 0.5) * in / out - 0.5, clamped to the edge, no antialiasing.
* ``adaptive_avg_pool`` (Fast-SCNN's pyramid, bins 2, 3 and 6): per axis the (out, in) averaging
  matrix of PyTorch's bins (start floor(i * in / out), end ceil((i + 1) * in / out)) built from
  the run-time size (``Range``, integer ``Div``, comparisons), then two ``MatMul``: what
  ``layers.adaptive_avg_pool`` computes with its constant matrices.
* ``pool_3x3_s2``: ``MaxPool`` / ``AveragePool`` (``count_include_pad=1``), kernel 3, stride 2,
  pads 1.

The primitives take NHWC maps, as the models; the plugins compute in NCHW between two
``Transpose`` nodes, which cancel with those jax2onnx writes around the convolutions.

Why not rewrite a fixed-size trace afterwards: the constants to replace (gather indices,
interpolation weights, slice bounds) would have to be recognised in the graph after jax2onnx
lowered them, and any size-dependent constant missed would silently compute the traced size.
Traced symbolically, a size-dependent operation not written here fails the export instead.
"""

from __future__ import annotations

import jax
import numpy as np
import onnx_ir as ir
from jax.extend.core import Primitive
from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

_NCHW, _NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


def _primitive(name: str, shape_rule) -> Primitive:
  primitive = Primitive(f'bisenet_jax_{name}')
  primitive.def_abstract_eval(
      lambda x, **params: jax.core.ShapedArray(shape_rule(x.shape, **params), x.dtype))
  return primitive


def _pooled_side(side):
  # A 3x3, stride 2, pad 1 window's output side, written as a convolution's is so that the
  # symbolic sizes compare equal to those of the convolutions beside it.
  return (side + 2 - 3) // 2 + 1


_pool_p = _primitive('pool_3x3_s2', lambda shape, kind: (
    shape[0], _pooled_side(shape[1]), _pooled_side(shape[2]), shape[3]))
_resize_p = _primitive('resize', lambda shape, size, method: (shape[0], *size, shape[3]))
_adaptive_p = _primitive('adaptive_avg_pool', lambda shape, size: (
    shape[0], size, size, shape[3]))


class _ShapeOps:
  """``kernels.ShapeOps`` binding the primitives (only traced: they have no implementation)."""

  def pool_3x3_s2(self, x, kind):
    return _pool_p.bind(x, kind=kind)

  def resize(self, x, size, method):
    return _resize_p.bind(x, size=tuple(size), method=method)

  def adaptive_avg_pool(self, x, size):
    return _adaptive_p.bind(x, size=size)


SHAPE_OPS = _ShapeOps()


class _Writer:
  """Adds nodes to jax2onnx's graph for one equation, with their types and shapes."""

  def __init__(self, ctx, eqn):
    self.ctx, self.eqn = ctx, eqn
    self.builder = ctx.builder
    aval = eqn.invars[0].aval
    self.shape, self.dtype = tuple(aval.shape), ir.DataType.from_numpy(np.dtype(aval.dtype))

  def input(self):
    return self.ctx.get_value_for_var(self.eqn.invars[0], name_hint=self.ctx.fresh_name('x'))

  def node(self, op: str, *inputs, shape, dtype=None, name: str | None = None, **attributes):
    value = getattr(self.builder, op)(*inputs, _outputs=[name or self.ctx.fresh_name(op)],
                                      **attributes)
    value.type = ir.TensorType(self.dtype if dtype is None else dtype)
    _stamp_type_and_shape(value, shape)
    _ensure_value_metadata(self.ctx, value)
    return value

  def constant(self, array: np.ndarray):
    return self.builder.add_initializer_from_array(name=self.ctx.fresh_name('shape_ops_const'),
                                                   array=array)

  def ints(self, op: str, *inputs, shape=(1,), **attributes):
    return self.node(op, *inputs, shape=shape, dtype=ir.DataType.INT64, **attributes)

  def to_nchw(self):
    n, h, w, c = self.shape
    return self.node('Transpose', self.input(), shape=(n, c, h, w), perm=_NCHW)

  def finish(self, nchw):
    """Binds ``nchw`` transposed back to NHWC as the equation's output."""
    out_var = self.eqn.outvars[0]
    name = self.ctx.get_value_for_var(out_var, name_hint=self.ctx.fresh_name('out')).name
    out = self.node('Transpose', nchw, shape=tuple(out_var.aval.shape), perm=_NHWC, name=name)
    self.ctx.bind_value_for_var(out_var, out)

  def side(self, nchw, axis: int):
    """The run-time size of ``nchw``'s ``axis``: int64 [1]."""
    return self.ints('Shape', nchw, start=axis, end=axis + 1)


def _nchw_shape(shape):
  n, h, w, c = shape
  return n, c, h, w


@register_primitive(jaxpr_primitive=_pool_p.name, context='primitives.bisenet_jax',
                    component='pool_3x3_s2', since='bisenet_jax')
class _PoolPlugin(PrimitiveLeafPlugin):

  def lower(self, ctx, eqn):
    writer = _Writer(ctx, eqn)
    kind = eqn.params['kind']
    attributes = {'kernel_shape': (3, 3), 'strides': (2, 2), 'pads': (1, 1, 1, 1)}
    if kind == 'avg':
      attributes['count_include_pad'] = 1
    pooled = writer.node('MaxPool' if kind == 'max' else 'AveragePool', writer.to_nchw(),
                         shape=_nchw_shape(eqn.outvars[0].aval.shape), **attributes)
    writer.finish(pooled)


@register_primitive(jaxpr_primitive=_resize_p.name, context='primitives.bisenet_jax',
                    component='resize', since='bisenet_jax')
class _ResizePlugin(PrimitiveLeafPlugin):

  def lower(self, ctx, eqn):
    writer = _Writer(ctx, eqn)
    x = writer.to_nchw()
    # Sizes [N, C, h, w]: the batch and channels as they are, h and w the symbolic target.
    batch_channels = writer.ints('Shape', x, shape=(2,), start=0, end=2)
    target = ctx.dim_expr_lowerer(list(eqn.params['size']))
    sizes = writer.ints('Concat', batch_channels, target, shape=(4,), axis=0)
    attributes = {'mode': 'linear', 'coordinate_transformation_mode': 'half_pixel'}
    if eqn.params['method'] == 'nearest':
      attributes = {'mode': 'nearest', 'coordinate_transformation_mode': 'asymmetric',
                    'nearest_mode': 'floor'}
    resized = writer.node('Resize', x, None, None, sizes,
                          shape=_nchw_shape(eqn.outvars[0].aval.shape), **attributes)
    writer.finish(resized)


@register_primitive(jaxpr_primitive=_adaptive_p.name, context='primitives.bisenet_jax',
                    component='adaptive_avg_pool', since='bisenet_jax')
class _AdaptivePoolPlugin(PrimitiveLeafPlugin):

  def lower(self, ctx, eqn):
    writer = _Writer(ctx, eqn)
    size = eqn.params['size']
    n, h, w, c = writer.shape
    x = writer.to_nchw()
    rows = self.bins_matrix(writer, x, 2, h, size)                                 # [size, H]
    columns = writer.node('Transpose', self.bins_matrix(writer, x, 3, w, size),
                          shape=(w, size), perm=(1, 0))                            # [W, size]
    x = writer.node('MatMul', rows, x, shape=(n, c, size, w))
    writer.finish(writer.node('MatMul', x, columns, shape=(n, c, size, size)))

  @staticmethod
  def bins_matrix(writer: _Writer, nchw, axis: int, side, size: int):
    """The (size, side) matrix averaging each of PyTorch's adaptive bins along ``axis``.

    Row i is 1 / (end - start) on inputs start .. end - 1, with start = floor(i * side / size)
    and end = ceil((i + 1) * side / size) = (((i + 1) * side + size - 1) // size): integer
    ``Div`` of non-negative values floors. ``side`` is the axis' (symbolic) size; the count
    end - start is the row's sum of ones, exact in floating point.
    """
    ints, const = writer.ints, writer.constant
    bins = np.arange(size, dtype=np.int64).reshape(size, 1)
    length = writer.side(nchw, axis)
    column = (size, 1)
    start = ints('Div', ints('Mul', const(bins), length, shape=column), const(np.int64(size)),
                 shape=column)
    reach = ints('Add', ints('Mul', const(bins + 1), length, shape=column),
                 const(np.int64(size - 1)), shape=column)
    stop = ints('Div', reach, const(np.int64(size)), shape=column)
    positions = ints('Range', const(np.int64(0)), ints('Squeeze', length, shape=()),
                     const(np.int64(1)), shape=(side,))
    flags = [writer.node(op, positions, bound, shape=(size, side), dtype=ir.DataType.BOOL)
             for op, bound in (('GreaterOrEqual', start), ('Less', stop))]
    inside = writer.node('And', *flags, shape=(size, side), dtype=ir.DataType.BOOL)
    # Ones on the bins through Where, not Cast: a float16 conversion retypes the constants.
    dtype = writer.dtype.numpy()
    ones = writer.node('Where', inside, const(np.ones((), dtype)), const(np.zeros((), dtype)),
                       shape=(size, side))
    count = writer.node('ReduceSum', ones, const(np.array([1], np.int64)), shape=column,
                        keepdims=1)
    return writer.node('Div', ones, count, shape=(size, side))
