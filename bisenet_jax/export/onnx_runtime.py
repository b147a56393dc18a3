"""Runs an exported ``.onnx`` on ONNX Runtime, with NumPy only: no JAX on this path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from bisenet_jax import resampling
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

  ``threads``: intra-op threads (default: ONNX Runtime's, one per core), the caller's included;
  the graph runs its operators one at a time (one inter-op thread), so these are all it uses.
  """
  ort = require()
  options = ort.SessionOptions()
  options.log_severity_level = 3  # Errors only: its warnings are advice about the graph.
  options.inter_op_num_threads = 1
  if threads:
    options.intra_op_num_threads = threads
  try:
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=['CPUExecutionProvider'])
  except Exception as e:  # ORT raises its own types for missing, corrupt or unsupported files.
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    name = 'the exported model' if isinstance(model, bytes) else model
    raise UserError(f'ONNX Runtime cannot load {name}: {reason}') from None


class OnnxModel:
  """An exported model file with its ``Interface`` and dataset, read from its metadata."""

  def __init__(self, path: str | Path, threads: int | None = None):
    self.path = Path(path)
    self.session = session(path, threads)
    metadata = self.session.get_modelmeta().custom_metadata_map
    if INTERFACE_KEY not in metadata:
      raise UserError(f'{path} was not written by python -m bisenet_jax.export '
                      f'(its metadata has no {INTERFACE_KEY})')
    self.interface = Interface.from_json(metadata[INTERFACE_KEY])
    self.dataset = recorded_dataset(self.interface, metadata.get(DATASET_KEY))

  def run(self, images: np.ndarray) -> np.ndarray:
    """The model's output for an input as its interface takes it."""
    return self.session.run(None, {INPUT_NAME: images})[0]

  def labels(self, images: np.ndarray, out_size=None) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB images -> uint8 [N, out_h, out_w] class ids (default: at the
    images' size).

    A logits file's logits are upsampled to ``out_size`` and their argmax taken here, as the
    evaluation protocol does (``inference.predict_labels``). A labels file computes them at the
    images' size; they are resized to another ``out_size`` nearest (``resize_labels``), where
    the protocol would have resized the logits: a few boundary pixels can differ. At the
    images' size both give the same masks (a file of fixed network size has already resized its
    logits to the images' stride-8 grid: a second resize, which can move a few boundary
    pixels).
    """
    out_size = tuple(images.shape[1:3] if out_size is None else out_size)
    if self.interface.outputs == 'labels':
      return resize_labels(self._output(images), out_size)
    return self.logits(images, out_size).argmax(-1).astype(np.uint8)

  def logits(self, images: np.ndarray, out_size=None) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB images -> float32 [N, out_h, out_w, K] logits (default: at the
    images' size; a logits file's only)."""
    if self.interface.outputs == 'labels':
      raise UserError(f'{self.path} gives class ids, not logits: export the model again with '
                      '--outputs logits')
    output = self._output(images)
    logits = output.transpose(0, 2, 3, 1) if self.interface.layout == 'nchw' else output
    return upsample_bilinear(logits.astype(np.float32),
                             images.shape[1:3] if out_size is None else out_size)

  def _output(self, images: np.ndarray) -> np.ndarray:
    interface = self.interface
    if not interface.any_input_size and images.shape[1:3] != interface.input_size:
      raise UserError(f'{self.path} takes {format_size(interface.input_size)} images, this one '
                      f'is {format_size(images.shape[1:3])}: export the model again with '
                      f'--input-size {format_size(images.shape[1:3])}')
    return self.run(interface.prepare(images))


def recorded_dataset(interface: Interface, dataset_json: str | None) -> DatasetSpec | None:
  """The dataset a file records (None: none), with the test resize its interface records (the
  two agree in files the export writes; the interface is the file's own statement)."""
  if dataset_json is None:
    return None
  dataset = DatasetSpec.from_json(json.loads(dataset_json))
  if interface.resize_to is None:  # A file written before the interface recorded it.
    return dataset
  return dataclasses.replace(dataset, resize_to=tuple(interface.resize_to))


def resize_labels(labels: np.ndarray, size) -> np.ndarray:
  """uint8 [N, h, w] labels -> [N, height, width], nearest: source index floor(dst * in / out),
  the rule of ``cv2.INTER_NEAREST`` (which resizes labels elsewhere); the labels themselves at
  their own size."""
  in_height, in_width = labels.shape[1:3]
  if (in_height, in_width) == tuple(size):
    return labels
  rows = np.arange(size[0]) * in_height // size[0]
  cols = np.arange(size[1]) * in_width // size[1]
  return labels[:, rows[:, None], cols[None, :]]


def upsample_bilinear(x: np.ndarray, size) -> np.ndarray:
  """F.interpolate(x, size, mode='bilinear', align_corners=False) on float32 NHWC maps, in
  float32: ``layers.resize_bilinear``'s taps and order (width, then height), without JAX."""
  x = resampling.resize_axis_linear(x, 2, size[1])
  return resampling.resize_axis_linear(x, 1, size[0])
