"""Runs an exported ``.onnx`` on ONNX Runtime, with NumPy only: no JAX on this path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bisenet_jax.errors import UserError
from bisenet_jax.export import DATASET_KEY, EXTRA_HINT, INPUT_NAME, INTERFACE_KEY, Interface
from bisenet_jax.specs import DatasetSpec, format_size


def require():
  """The ``onnxruntime`` module, or a one-line error naming the extra that installs it."""
  try:
    import onnxruntime
  except ImportError:
    raise UserError(f'Running an .onnx model needs onnxruntime: {EXTRA_HINT}') from None
  return onnxruntime


def session(model: str | Path | bytes, threads: int | None = None):
  """An ``onnxruntime.InferenceSession`` on the CPU for a file or a serialised model.

  ``threads``: intra-op threads (default: ONNX Runtime's, one per core).
  """
  ort = require()
  options = ort.SessionOptions()
  options.log_severity_level = 3  # Errors only: its warnings are advice about the graph.
  if threads:
    options.intra_op_num_threads = threads
  try:
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=['CPUExecutionProvider'])
  except Exception as e:  # ORT raises its own types for missing, corrupt or unsupported files.
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    name = 'the exported model' if isinstance(model, bytes) else model
    raise UserError(f'ONNX Runtime cannot load {name}: {reason}') from None


class OnnxSegmenter:
  """An exported model file with its ``Interface`` and dataset, read from its metadata."""

  def __init__(self, path: str | Path, threads: int | None = None):
    self.path = Path(path)
    self.session = session(path, threads)
    metadata = self.session.get_modelmeta().custom_metadata_map
    if INTERFACE_KEY not in metadata:
      raise UserError(f'{path} was not written by python -m bisenet_jax.export '
                      f'(its metadata has no {INTERFACE_KEY})')
    self.interface = Interface.from_json(metadata[INTERFACE_KEY])
    self.dataset = (DatasetSpec.from_json(json.loads(metadata[DATASET_KEY]))
                    if DATASET_KEY in metadata else None)

  def run(self, images: np.ndarray) -> np.ndarray:
    """The model's output for an input as its interface takes it."""
    return self.session.run(None, {INPUT_NAME: images})[0]

  def require_labels(self) -> None:
    """Prediction and evaluation need a '--outputs labels' file."""
    if self.interface.outputs != 'labels':
      raise UserError(f'{self.path} outputs logits; prediction needs the labels at image size: '
                      'export it again with --outputs labels')

  def labels(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB images -> uint8 [N, H, W] class ids (``require_labels``)."""
    interface = self.interface
    if not interface.any_input_size and images.shape[1:3] != interface.input_size:
      raise UserError(f'{self.path} takes {format_size(interface.input_size)} images, this one '
                      f'is {format_size(images.shape[1:3])}: export the model again with '
                      f'--input-size {format_size(images.shape[1:3])}')
    return self.run(interface.prepare(images))
