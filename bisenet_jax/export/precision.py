"""float16 and int8 ONNX files from the float32 one.

float16: onnxconverter-common's ``convert_float_to_float16`` with the inputs and outputs kept
float32. int8: ONNX Runtime's static quantization in the QDQ format (per-channel int8 weights,
uint8 activations whose ranges are calibrated on real images). Only the convolutions are
quantized (all 37, the classifier included). Measured on a trained R18 (docs/deployment.md):
convolutions only, 99.86% of the labels agree with float32 and the mIoU moves by 0.01 points;
quantizing every operator ONNX Runtime can (the resizes, the lookup normalisation, the attention
products and sums too) drops agreement to 96.42% and mIoU by 3.2 points for 5% more speed.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from bisenet_jax.errors import UserError
from bisenet_jax.export import EXTRA_HINT, INPUT_NAME

QUANTIZED_OPS = ('Conv',)


def convert(model, dtype: str, calibration_inputs=None):
  """``model`` (float32) in ``dtype``: itself, ``to_float16`` or ``to_int8``."""
  with _quiet_converters():
    if dtype == 'float16':
      return to_float16(model)
    if dtype == 'int8':
      return to_int8(model, calibration_inputs)
  return model


@contextlib.contextmanager
def _quiet_converters():
  """The converters warn for every tensor (float16 rounding, quantization advice)."""
  logger = logging.getLogger()
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      yield
  finally:
    logger.setLevel(level)


def require_float16():
  """onnxconverter-common's ``float16`` module, or a one-line error naming the extra."""
  try:
    from onnxconverter_common import float16
  except ImportError:
    raise UserError(f'float16 ONNX export needs onnxconverter-common: {EXTRA_HINT}') from None
  return float16


def to_float16(model):
  """Weights and activations in float16; inputs and outputs as they were."""
  return require_float16().convert_float_to_float16(model, keep_io_types=True)


def to_int8(model, calibration_inputs: Callable[[], Iterable[np.ndarray]]):
  """Statically quantized convolutions, activation ranges from ``calibration_inputs()``.

  Args:
    model: the float32 ModelProto.
    calibration_inputs: returns an iterable of inputs as the file takes them (one batch each).
  """
  import onnx
  from onnxruntime import quantization

  class Reader(quantization.CalibrationDataReader):
    def __init__(self):
      self.inputs = iter(calibration_inputs())

    def get_next(self):
      batch = next(self.inputs, None)
      return None if batch is None else {INPUT_NAME: batch}

  with tempfile.TemporaryDirectory() as folder:
    source, target = Path(folder) / 'float32.onnx', Path(folder) / 'int8.onnx'
    onnx.save(model, source)
    quantization.quantize_static(
        str(source), str(target), Reader(), quant_format=quantization.QuantFormat.QDQ,
        per_channel=True, activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS))
    return onnx.load(target)
