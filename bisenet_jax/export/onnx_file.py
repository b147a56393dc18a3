"""ONNX through jax2onnx (imported here only: the ``export`` extra), taking any image size.

By default the network is traced with symbolic height and width: the file computes it at each
image's own size, as the checkpoint does (``onnx_ops`` writes the operations whose arithmetic
depends on the sizes: resizes, adaptive and 3x3 pools). With a fixed ``Interface`` size the
network is traced at that size and ``wrap`` resizes the images to it (a bilinear ``Resize``,
half-pixel, no antialiasing: ``resize_bilinear``'s arithmetic) and its output back, for runtimes
that want one shape (TensorRT engines). ``wrap`` also puts the interface around the network with
standard ONNX operators: the normalisation as a lookup (``Gather`` on the same table as
``normalization.normalize``, bit-identical) and, for labels, a ``Resize`` of the logits to the
input's size and ``ArgMax``. Finally ONNX Runtime's basic (portable) graph optimisations fold the
BatchNorms into the convolutions and cancel the transposes jax2onnx writes around NHWC
convolutions: about 800 nodes become 120-210.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from bisenet_jax.data.normalization import normalization_table
from bisenet_jax.errors import UserError
from bisenet_jax.export import EXTRA_HINT, INPUT_NAME, OUTPUT_STRIDE, Interface, records

# ReduceMean with its axes as an input (what jax2onnx emits for global pooling) and Resize with
# an `axes` attribute need opset 18; 18 is also what TensorRT 10 and OpenVINO 2024 read.
OPSET = 18
_NETWORK_INPUT = 'network/images'
_NETWORK_OUTPUT = 'network/logits'


def require():
  """``(jax2onnx, onnx)``, or a one-line error naming the extra that installs them."""
  try:
    import jax2onnx
    import onnx
  except ImportError:
    raise UserError(f'ONNX export needs jax2onnx and onnx: {EXTRA_HINT}') from None
  return jax2onnx, onnx


def build(model, variables: dict, interface: Interface, calibration_inputs=None):
  """The ModelProto of an exported file: the float32 network taking any size, then float16 or
  int8 (``precision``; int8 calibrates on ``calibration_inputs()``, inputs as the file takes
  them). Without its metadata (``with_metadata``)."""
  from bisenet_jax.export import graph, precision
  network = export_network(graph.network_fn(model, variables, interface.layout),
                           graph.input_spec(graph.network_interface(interface)))
  proto = optimize(wrap(network, interface))
  return precision.convert(proto, interface.dtype, calibration_inputs)


def export_network(fn, spec):
  """The ModelProto of the network ``fn`` (``graph.network_fn``) for inputs like ``spec``
  (symbolic or fixed height and width), traced with standard convolutions and with the
  size-dependent operations of ``onnx_ops`` (``kernels.portable``)."""
  from bisenet_jax.models import kernels
  jax2onnx, _ = require()
  from bisenet_jax.export import onnx_ops
  # jax2onnx 0.13 prints its Flax plugins' debug lines and logs value-type warnings that say
  # nothing about the result (which onnx.checker and the export's comparison do check).
  for name in ('jax2onnx', 'onnx_ir'):
    logging.getLogger(name).setLevel(logging.ERROR)
  with contextlib.redirect_stdout(io.StringIO()), kernels.portable(onnx_ops.SHAPE_OPS):
    return jax2onnx.to_onnx(fn, [spec], model_name='bisenet_jax', opset=OPSET,
                            input_names=[INPUT_NAME], output_names=['logits'])


def wrap(network, interface: Interface):
  """The file's graph: ``network`` (logits at stride 8) behind the interface's normalisation,
  resized to and from a fixed network size if the interface has one, then labels if asked."""
  _, onnx = require()
  from onnx import TensorProto, helper, numpy_helper
  nchw = interface.layout == 'nchw'
  spatial = [2, 3] if nchw else [1, 2]
  channel_shape = (1, 3, 1, 1) if nchw else (1, 1, 1, 3)
  fixed = interface.input_size is not None
  resized_logits = interface.outputs == 'labels' or fixed  # To the input's size or grid.
  constants = {}
  if resized_logits:
    constants['spatial_start'] = np.array([spatial[0]], np.int64)
    constants['spatial_end'] = np.array([spatial[1] + 1], np.int64)
  if fixed:
    constants['size'] = np.array(interface.input_size, np.int64)
  if interface.preprocessing:
    # Channel c of value v is entry 256 * c + v of the channel-major table.
    constants['table'] = normalization_table().T.reshape(-1).astype(np.float32)
    constants['channel_offsets'] = (256 * np.arange(3, dtype=np.int64)).reshape(channel_shape)
  if interface.outputs == 'logits' and fixed:
    constants['stride_minus_one'] = np.array(OUTPUT_STRIDE - 1, np.int64)
    constants['stride'] = np.array(OUTPUT_STRIDE, np.int64)
  initializers = [numpy_helper.from_array(value, f'any_size/{name}')
                  for name, value in constants.items()]
  c = lambda name: f'any_size/{name}'  # noqa: E731
  resize = lambda inputs, output: helper.make_node(  # noqa: E731
      'Resize', [inputs[0], '', '', inputs[1]], [output], mode='linear',
      coordinate_transformation_mode='half_pixel', axes=spatial)
  before, images = [], INPUT_NAME
  if interface.preprocessing:
    before += [helper.make_node('Cast', [INPUT_NAME], [c('index')], to=TensorProto.INT64),
               helper.make_node('Add', [c('index'), c('channel_offsets')], [c('entry')]),
               helper.make_node('Gather', [c('table'), c('entry')], [c('normalised')], axis=0)]
    images = c('normalised')
  if fixed:
    before.append(resize([images, c('size')], c('resized')))
    images = c('resized')
  input_size = [helper.make_node('Shape', [INPUT_NAME], [c('shape')]),
                helper.make_node('Slice', [c('shape'), c('spatial_start'), c('spatial_end')],
                                 [c('input_size')])]
  logits = c('logits') if resized_logits else 'logits'
  if interface.outputs == 'labels':
    after = input_size + [
        resize([logits, c('input_size')], c('upsampled')),
        helper.make_node('ArgMax', [c('upsampled')], [c('argmax')], axis=1 if nchw else 3,
                         keepdims=0),
        helper.make_node('Cast', [c('argmax')], ['labels'], to=TensorProto.UINT8)]
    output = helper.make_tensor_value_info('labels', TensorProto.UINT8, ['N', 'H', 'W'])
  else:
    # ceil(size / 8) = (size + 7) // 8 on positive integers.
    after = [] if not fixed else input_size + [
        helper.make_node('Add', [c('input_size'), c('stride_minus_one')], [c('padded')]),
        helper.make_node('Div', [c('padded'), c('stride')], [c('stride_size')]),
        resize([logits, c('stride_size')], 'logits')]
    output = helper.make_tensor_value_info('logits', TensorProto.FLOAT,
                                           list(interface.output_shape('N')))
  graph = network.graph
  for node in graph.node:  # The network reads the (normalised, resized) images.
    node.input[:] = [images if name == INPUT_NAME else name for name in node.input]
    node.output[:] = [logits if name == 'logits' else name for name in node.output]
  for node in before + after:  # Named, as converters derive the names they add from them.
    node.name = f'any_size/{node.output[0]}'
  inputs = [helper.make_tensor_value_info(
      INPUT_NAME, TensorProto.UINT8 if interface.preprocessing else TensorProto.FLOAT,
      list(interface.input_shape('N')))]
  wrapped = helper.make_graph(before + list(graph.node) + after, 'bisenet_jax', inputs, [output],
                              initializer=list(graph.initializer) + initializers)
  model = helper.make_model(wrapped, opset_imports=network.opset_import,
                            producer_name='bisenet_jax')
  onnx.checker.check_model(model)
  return model


def optimize(model):
  """ONNX Runtime's basic graph optimisations (constant folding, Conv + BatchNorm fusion,
  transpose cancelling): standard operators only, so the file stays portable."""
  _, onnx = require()
  from bisenet_jax.export import onnx_runtime
  ort = onnx_runtime.require()
  options = ort.SessionOptions()
  options.log_severity_level = 3  # Errors only.
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
  with tempfile.TemporaryDirectory() as folder:
    options.optimized_model_filepath = str(Path(folder) / 'optimized.onnx')
    ort.InferenceSession(model.SerializeToString(), options, providers=['CPUExecutionProvider'])
    return onnx.load(options.optimized_model_filepath)


def with_metadata(model, interface: Interface, dataset_json: str | None):
  """``model`` carrying its interface and dataset in ``metadata_props``, checked."""
  _, onnx = require()
  del model.metadata_props[:]
  for key, value in records(interface, dataset_json).items():
    model.metadata_props.add(key=key, value=value)
  onnx.checker.check_model(model)
  return model


def opset(data: bytes) -> int:
  _, onnx = require()
  model = onnx.load_from_string(data)
  return next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))
