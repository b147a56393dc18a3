"""Export of a model to ONNX (jax2onnx) and StableHLO (``jax.export``), and its interface.

``python -m bisenet_jax.export`` writes the file (``__main__``); ``graph`` builds the JAX
functions it exports and checks against; ``onnx_file`` serialises the ONNX graph and makes it
take any image size, ``precision`` makes float16 and int8 files, ``calibration`` reads their
images, ``stablehlo_file`` writes StableHLO; ``triton`` lays an ``.onnx`` out as a Triton
model repository; ``onnx_runtime`` runs an exported ``.onnx`` without JAX (``predict``,
``evaluate``, the benchmark). This module holds what both sides share and imports neither
JAX nor ONNX: the ``Interface`` of an exported model, which the ONNX file carries in its
``metadata_props`` and a StableHLO file in the JSON file beside it (``RECORD_SUFFIX``; see
docs/deployment.md).
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from bisenet_jax.data.normalization import MEAN_RGB, STD_RGB, normalize
from bisenet_jax.specs import RESIZE_TO

FORMATS = ('onnx', 'stablehlo', 'triton-repository')
# The formats whose model is an .onnx file (a Triton repository holds one).
ONNX_FORMATS = ('onnx', 'triton-repository')
LAYOUTS = ('nchw', 'nhwc')
OUTPUTS = ('logits', 'labels')
DTYPES = ('float32', 'float16', 'int8')
INPUT_NAME = 'images'
OUTPUT_STRIDE = 8
# metadata_props keys of an exported .onnx: the Interface and the dataset (classes, colours).
INTERFACE_KEY = 'bisenet_jax.interface'
DATASET_KEY = 'bisenet_jax.dataset'
EXTRA_HINT = "pip install -e '.[export]'"
# A StableHLO file <name> has no metadata: its records are in <name>.json, under the same keys.
RECORD_SUFFIX = '.json'


@dataclasses.dataclass(frozen=True)
class Interface:
  """What an exported model takes and returns.

  Attributes:
    height, width: the size the network runs at, or None: at each image's own size.
    num_classes: K.
    layout: 'nchw' (as PyTorch exports) or 'nhwc', of the input and of the logits.
    outputs: 'logits' (float32 at stride 8: ceil(H/8) x ceil(W/8) of the input) or 'labels'
      (uint8 [N, H, W]: the logits upsampled bilinearly to the input's size, then argmax, as
      ``inference.predict_labels``).
    preprocessing: the input is uint8 RGB and the graph normalises it (bit-identical to
      ``normalize``); otherwise float32 RGB normalised with MEAN_RGB / STD_RGB.
    dtype: the precision inside the graph ('float32', 'float16', or 'int8': statically
      quantized convolutions); inputs and logits stay float32.
    any_input_size: the file takes images of any size (ONNX): without height and width the
      network runs at each image's size; with them it resizes the images (bilinearly,
      half-pixel, as ``resize_bilinear``) to height x width and its output back to theirs, as
      ``InferenceSpec(input_size=(height, width))`` does in JAX. Otherwise (StableHLO) the input
      must be height x width.
    resize_to: the (height, width) of the dataset's test Resize, which the file expects to be
      applied before it: each image resized to fit it keeping its aspect ratio
      (``transforms.resize_keep_ratio``: OpenCV bilinear on uint8), and the output brought back
      to the image's size (the logits bilinearly, as ``upsample_bilinear``; labels nearest),
      as the checkpoint is evaluated. None in files written before it was recorded, for which
      the dataset's target applies (``Segmenter``).
  """
  height: int | None
  width: int | None
  num_classes: int
  layout: str = 'nchw'
  outputs: str = 'logits'
  preprocessing: bool = False
  dtype: str = 'float32'
  any_input_size: bool = False
  resize_to: tuple[int, int] | None = None

  @property
  def input_size(self) -> tuple[int, int] | None:
    """The size the network runs at; None: each image's own."""
    return None if self.height is None else (self.height, self.width)

  @property
  def input_dtype(self) -> str:
    return 'uint8' if self.preprocessing else 'float32'

  @property
  def output_name(self) -> str:
    return self.outputs

  def prepare(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] RGB images -> the file's input: normalised unless the graph does it,
    in its layout, contiguous."""
    inputs = images if self.preprocessing else normalize(images)
    return np.ascontiguousarray(inputs.transpose(0, 3, 1, 2) if self.layout == 'nchw' else inputs)

  def input_shape(self, batch='N') -> tuple:
    height, width = ('H', 'W') if self.any_input_size else self.input_size
    return (batch, 3, height, width) if self.layout == 'nchw' else (batch, height, width, 3)

  def output_shape(self, batch='N') -> tuple:
    height, width = ('H', 'W') if self.any_input_size else self.input_size
    if self.outputs == 'labels':
      return (batch, height, width)
    if self.any_input_size:
      size = (f'ceil(H/{OUTPUT_STRIDE})', f'ceil(W/{OUTPUT_STRIDE})')
    else:
      size = (math.ceil(height / OUTPUT_STRIDE), math.ceil(width / OUTPUT_STRIDE))
    if self.layout == 'nchw':
      return (batch, self.num_classes, *size)
    return (batch, *size, self.num_classes)

  def to_json(self) -> str:
    """The fields, plus the normalisation constants for readers of the file."""
    return json.dumps({**dataclasses.asdict(self), 'mean_rgb': list(MEAN_RGB),
                       'std_rgb': list(STD_RGB), 'output_stride': OUTPUT_STRIDE})

  @classmethod
  def from_json(cls, text: str) -> Interface:
    """The inverse of ``to_json``; fields that older files lack keep their defaults."""
    fields = json.loads(text)
    if fields.get('resize_to') is not None:
      fields['resize_to'] = tuple(fields['resize_to'])
    return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls) if f.name in fields})


def protocol_resize_to(dataset) -> tuple[int, int]:
  """The test resize target of a checkpoint's recorded ``DatasetSpec`` (None: it records none,
  so it is evaluated as Cityscapes: 1024x2048): what an exported file records."""
  return tuple(dataset.resize_to) if dataset is not None else RESIZE_TO['cityscapes']


def records(interface: Interface, dataset_json: str | None) -> dict[str, str]:
  """What an exported file records, {key: JSON text}: its interface and, when the checkpoint
  records one, its dataset (classes, colours, kind, test resize)."""
  entries = {INTERFACE_KEY: interface.to_json()}
  if dataset_json is not None:
    entries[DATASET_KEY] = dataset_json
  return entries


def describe(shape: tuple, dtype: str) -> str:
  """('N', 3, 512, 1024), 'float32' -> 'float32[N,3,512,1024]'."""
  return f'{dtype}[{",".join(str(d) for d in shape)}]'
