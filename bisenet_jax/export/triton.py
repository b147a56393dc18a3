"""An exported ``.onnx`` as a Triton Inference Server model repository (``--format
triton-repository``).

  <repository>/<name>/config.pbtxt    the onnxruntime_onnx backend, the file's inputs and outputs
  <repository>/<name>/1/model.onnx    the same file ``--format onnx`` writes
  <repository>/<name>/labels.txt      class i's name on line i + 1 (when the model records them)

Triton's classification extension ranks the scores of one vector per image; a segmentation
model's output is a map per image, so the class names travel as a plain ``labels.txt`` (not as
an output's ``label_filename``) and the masks come back as ``labels`` (or ``logits``) tensors.
The model folder is written whole under a temporary name and renamed into place: a failed export
leaves the repository as it was. Only text here: no ONNX, no JAX, no tritonclient (the tests
check the configuration against Triton's protobuf schema).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from bisenet_jax.errors import UserError
from bisenet_jax.export import INPUT_NAME, Interface

INSTANCE_KINDS = ('cpu', 'gpu')
VERSION = '1'
MODEL_FILE = 'model.onnx'
CONFIG_FILE = 'config.pbtxt'
LABELS_FILE = 'labels.txt'
_DATA_TYPES = {'uint8': 'TYPE_UINT8', 'float32': 'TYPE_FP32'}


@dataclasses.dataclass(frozen=True)
class TritonSpec:
  """How Triton serves the file.

  Attributes:
    model_name: the folder's name, which clients address (``/v2/models/<name>``).
    max_batch_size: the largest batch the dynamic batcher forms (the file takes any N).
    max_queue_delay_ms: how long a request may wait for others to batch with.
    instance_kind: 'cpu' (KIND_CPU) or 'gpu' (KIND_GPU: ONNX Runtime's CUDA provider).
  """
  model_name: str = 'bisenet'
  max_batch_size: int = 8
  max_queue_delay_ms: float = 5.0
  instance_kind: str = 'cpu'


def check_model_name(name: str) -> str:
  """A name Triton can use as a folder and in a URL path, or a one-line error."""
  if not name or name.startswith('.') or not all(c.isalnum() or c in '-_.' for c in name):
    raise UserError(f'--triton-model-name {name!r}: use letters, digits, -, _ and . only '
                    '(it is a folder name and part of the URL clients call)')
  return name


def tensor_dims(interface: Interface) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Input and output dims without the batch dimension (Triton adds it when max_batch_size >
  0); -1 for the height and width, which the file takes at any size."""
  image = (3, -1, -1) if interface.layout == 'nchw' else (-1, -1, 3)
  if interface.outputs == 'labels':
    return image, (-1, -1)
  classes = interface.num_classes
  return image, (classes, -1, -1) if interface.layout == 'nchw' else (-1, -1, classes)


def config_text(interface: Interface, spec: TritonSpec) -> str:
  """The model's ``config.pbtxt`` (protobuf text of Triton's ``inference.ModelConfig``)."""
  image_dims, output_dims = tensor_dims(interface)
  output_dtype = 'uint8' if interface.outputs == 'labels' else 'float32'
  delay_us = round(spec.max_queue_delay_ms * 1000)
  return '\n'.join([
      f'name: "{spec.model_name}"',
      'platform: "onnxruntime_onnx"',
      f'max_batch_size: {spec.max_batch_size}',
      _tensor('input', INPUT_NAME, interface.input_dtype, image_dims),
      _tensor('output', interface.output_name, output_dtype, output_dims),
      # Triton batches requests whose images have the same size; others run apart.
      f'dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n}}',
      f'instance_group [\n  {{\n    count: 1\n    kind: KIND_{spec.instance_kind.upper()}\n  }}\n]',
      ''])


def _tensor(field: str, name: str, dtype: str, dims: tuple[int, ...]) -> str:
  return (f'{field} [\n  {{\n    name: "{name}"\n    data_type: {_DATA_TYPES[dtype]}\n'
          f'    dims: [ {", ".join(map(str, dims))} ]\n  }}\n]')


def labels_text(names) -> str:
  for name in names:
    if '\n' in name or '\r' in name:
      raise UserError(f'class name {name!r} spans lines, which labels.txt cannot hold: rename '
                      'the class')
  return ''.join(f'{name}\n' for name in names)


def model_folder(repository: Path, spec: TritonSpec) -> Path:
  return Path(repository) / spec.model_name


def write_repository(repository: Path, spec: TritonSpec, onnx_data: bytes, interface: Interface,
                     class_names=None, replace: bool = False) -> Path:
  """Writes ``<repository>/<name>/`` whole or not at all; returns that folder.

  Args:
    repository: the model repository (created if missing; other models in it are left alone).
    onnx_data: the serialised ``.onnx`` (``--format onnx``'s bytes).
    class_names: the K class names for ``labels.txt``, or None to write none.
    replace: replace an existing model folder of that name (``--force``).

  Raises:
    UserError: the folder exists (without ``replace``) or cannot be written.
  """
  folder = model_folder(repository, spec)
  if folder.exists() and not replace:
    raise UserError(f'{folder} already exists: pass --force to replace it')
  labels = None if class_names is None else labels_text(class_names)
  staging = folder.with_name(f'.{folder.name}.{os.getpid()}.tmp')
  retired = folder.with_name(f'.{folder.name}.{os.getpid()}.old')
  try:
    try:
      (staging / VERSION).mkdir(parents=True)
      (staging / VERSION / MODEL_FILE).write_bytes(onnx_data)
      (staging / CONFIG_FILE).write_text(config_text(interface, spec))
      if labels is not None:
        (staging / LABELS_FILE).write_text(labels)
      if folder.exists():  # A folder cannot be renamed over another: move the old one aside.
        os.replace(folder, retired)
        try:
          os.replace(staging, folder)
        except OSError:
          os.replace(retired, folder)
          raise
      else:
        os.replace(staging, folder)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
      shutil.rmtree(retired, ignore_errors=True)
  except OSError as e:
    raise UserError(f'Cannot write {folder} ({e.strerror or e}): choose a writable --output') from e
  return folder
