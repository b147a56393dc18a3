"""ONNX through jax2onnx (imported here only: the ``export`` extra)."""

from __future__ import annotations

import contextlib
import io
import logging

from bisenet_jax.errors import UserError
from bisenet_jax.export import DATASET_KEY, EXTRA_HINT, INPUT_NAME, INTERFACE_KEY, Interface

# ReduceMean with its axes as an input (what jax2onnx emits for global pooling) needs opset 18;
# 18 is also what TensorRT 10 and OpenVINO 2024 read.
OPSET = 18


def require():
  """``(jax2onnx, onnx)``, or a one-line error naming the extra that installs them."""
  try:
    import jax2onnx
    import onnx
  except ImportError:
    raise UserError(f'ONNX export needs jax2onnx and onnx: {EXTRA_HINT}') from None
  return jax2onnx, onnx


def export_onnx(fn, spec, interface: Interface, dataset_json: str | None) -> bytes:
  """The serialised, checked ModelProto of ``fn`` for input ``spec``, with its metadata."""
  jax2onnx, onnx = require()
  # jax2onnx 0.13 prints its Flax plugins' debug lines and logs value-type warnings that say
  # nothing about the result (which onnx.checker and the comparison below do check).
  for name in ('jax2onnx', 'onnx_ir'):
    logging.getLogger(name).setLevel(logging.ERROR)
  with contextlib.redirect_stdout(io.StringIO()):
    proto = jax2onnx.to_onnx(fn, [spec], model_name='bisenet_jax', opset=OPSET,
                             input_names=[INPUT_NAME], output_names=[interface.output_name])
  entries = {INTERFACE_KEY: interface.to_json()}
  if dataset_json is not None:
    entries[DATASET_KEY] = dataset_json
  for key, value in entries.items():
    proto.metadata_props.add(key=key, value=value)
  onnx.checker.check_model(proto)
  return proto.SerializeToString()


def opset(data: bytes) -> int:
  _, onnx = require()
  model = onnx.load_from_string(data)
  return next(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))
