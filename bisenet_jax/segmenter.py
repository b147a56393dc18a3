"""One model ready to segment images: the Python API through which every command reaches a model.

  from bisenet_jax import Segmenter
  segmenter = Segmenter.load('fcn_bisenetv1_resnet18os32_cityscapes.pth')
  labels = segmenter('street.png')                  # uint8 [H, W] class ids
  logits = segmenter(image, logits=True)            # float32 [H, W, K], image: uint8 RGB array
  masks = segmenter.batch(images)                   # uint8 [N, H, W] for uint8 [N, H, W, 3]
  picture = segmenter.overlay(image, labels)        # the image blended with the class colours
  segmenter.classes.names, segmenter.palette

``Segmenter.load`` takes what every command takes: an official ``.pth``, a folder from
``convert/ssseg_to_flax.py``, a training workdir or step folder (JAX, one device), or an
``.onnx`` from ``python -m bisenet_jax.export`` (ONNX Runtime; JAX is never imported on that
path). Images are RGB uint8 arrays of any size, or image files. Each goes through the test
protocol the model was evaluated with, whichever runs it (``test_resize``): resized to fit the
dataset's test Resize target keeping its aspect ratio (``segmenter.resize_to``: the checkpoint's
or file's record, e.g. 512x1024 for a folder dataset, 1024x2048 for Cityscapes), normalised as
in training, run with the inference options of an ``InferenceSpec`` (the reference protocol by
default), and its logits upsampled back to the image's own size, where its labels (or logits)
come back. ``batch`` runs images of one size as one forward pass; images of several sizes run
one size at a time.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bisenet_jax.data import masks, sources, transforms
from bisenet_jax.data.images import read_image
from bisenet_jax.errors import UserError
from bisenet_jax.specs import ClassSet, DatasetSpec, InferenceSpec, Size

ImageLike = np.ndarray | str | os.PathLike


class Backend(abc.ABC):
  """Runs a model on uint8 [N, H, W, 3] RGB images of one size, its output at ``out_size``.

  Attributes:
    name: 'jax' or 'onnxruntime'.
    num_classes: K.
    input_size: the (height, width) the network runs at (an exported file of fixed size), or
      None: each image at its own size.
    description: what runs the model, e.g. 'int8 ONNX Runtime', for reports.
  """

  name: str
  num_classes: int
  input_size: tuple[int, int] | None = None
  description: str

  @abc.abstractmethod
  def labels(self, images: np.ndarray, out_size: Size) -> np.ndarray:
    """uint8 [N, out_h, out_w] class ids."""

  @abc.abstractmethod
  def logits(self, images: np.ndarray, out_size: Size) -> np.ndarray:
    """float32 [N, out_h, out_w, K] class logits, upsampled bilinearly to ``out_size``."""


class JaxBackend(Backend):
  """A checkpoint on one JAX device, through the shared jitted inference (compiled once per
  image size and batch size), in full float32 as in evaluation."""

  name = 'jax'

  def __init__(self, model, variables, spec: InferenceSpec):
    import jax

    from bisenet_jax.eval import evaluator
    self.num_classes = model.num_classes
    self.description = f'JAX on {jax.devices()[0].platform.upper()}'
    self._labels = evaluator.make_segment_fn(model, spec)
    self._logits = evaluator.make_segment_fn(model, spec, outputs='logits')
    self._variables = jax.device_put(variables, jax.devices()[0])

  def _run(self, segment, images, out_size):
    return np.asarray(segment(self._variables, images, out_size=tuple(out_size)))

  def labels(self, images, out_size):
    return self._run(self._labels, images, out_size)

  def logits(self, images, out_size):
    return self._run(self._logits, images, out_size)


class OnnxBackend(Backend):
  """An exported file on ONNX Runtime (``export.onnx_runtime``), NumPy around it."""

  name = 'onnxruntime'

  def __init__(self, exported):
    self.exported = exported
    interface = exported.interface
    self.num_classes = interface.num_classes
    self.input_size = interface.input_size
    self.description = f'{interface.dtype} ONNX Runtime'

  def labels(self, images, out_size):
    return self.exported.labels(images, out_size)

  def logits(self, images, out_size):
    return self.exported.logits(images, out_size)


class Segmenter:
  """A model with its classes, segmenting RGB images of any size (module docstring)."""

  def __init__(self, backend: Backend, dataset: DatasetSpec, source: str = ''):
    self.backend, self.dataset, self.source = backend, dataset, source

  @classmethod
  def load(cls, path: str | os.PathLike, *, inference: InferenceSpec = InferenceSpec(),
           ema: bool | None = None,
           dataset: str | Callable[[DatasetSpec | None], DatasetSpec] | None = None,
           classes: ClassSet | None = None, resize_to: Size | None = None,
           threads: int | None = None) -> Segmenter:
    """A model file or checkpoint, ready to segment.

    Args:
      path: an official ``.pth`` (needs torch), a converted or training checkpoint (folder or
        workdir), or an exported ``.onnx``.
      inference: whole / sliding window, flip, scales, input size (JAX only: an exported file
        runs each whole image once, as it was exported).
      ema: which weights of a checkpoint with an EMA (``checkpoint.load_model``); JAX only.
      dataset: the dataset kind whose classes the model predicts (default: what the file
        records, else Cityscapes), or a function from what the file records (None when
        nothing) to the dataset: how commands apply their dataset flags.
      classes: the classes, given explicitly (with a kind or none).
      resize_to: the test Resize target (height, width), given explicitly (default: the
        dataset's: what the file records, else the dataset kind's recipe's).
      threads: the threads that run the model (default: one per core): ONNX Runtime's
        intra-op threads, or the size of XLA's CPU thread pool (``jax_threads``: before JAX's
        first use in this process only).

    Raises:
      UserError: a missing or unreadable file, options the file cannot honour, or classes that
        do not match the model's.
    """
    path = str(path)
    if Path(path).suffix.lower() == '.onnx':
      from bisenet_jax.export.onnx_runtime import OnnxModel
      if not inference.is_plain or inference.input_size or ema is not None:
        raise UserError('an exported file runs each whole image once, at its own input size, '
                        'with the weights it was exported with: drop --mode, --window-*, --flip, '
                        '--scales, --input-size and --ema, or use the checkpoint it came from')
      exported = OnnxModel(path, threads)
      backend, recorded = OnnxBackend(exported), exported.dataset
    else:
      if threads:
        jax_threads(threads)
      from bisenet_jax import checkpoint, models, parallel
      parallel.setup('no')  # One device, one process.
      model, variables, recorded = checkpoint.load_model(path, ema)
      backend = JaxBackend(models.build(model), variables, inference)
    if callable(dataset):
      resolved = dataset(recorded)
    else:
      resolved = sources.resolve_dataset(dataset, recorded=recorded, classes=classes)
    if resize_to is not None:
      resolved = dataclasses.replace(resolved, resize_to=tuple(resize_to))
    sources.check_classes(path, backend.num_classes, resolved)
    return cls(backend, resolved, path)

  @property
  def classes(self) -> ClassSet:
    return self.dataset.classes

  @property
  def palette(self) -> np.ndarray:
    """uint8 [K, 3] RGB colour of each class."""
    return self.dataset.classes.palette

  @property
  def num_classes(self) -> int:
    return self.backend.num_classes

  @property
  def resize_to(self) -> Size:
    """(height, width) of the test Resize every image goes through (``test_resize``)."""
    return self.dataset.resize_to

  def __call__(self, image: ImageLike, *, logits: bool = False) -> np.ndarray:
    """uint8 [H, W] class ids of one image (an RGB uint8 [H, W, 3] array or an image file), or
    with ``logits`` its float32 [H, W, K] class logits."""
    return self.batch(as_image(image)[None], logits=logits)[0]

  def batch(self, images: np.ndarray | Sequence[ImageLike], *, logits: bool = False):
    """Several images: uint8 [N, H, W, 3] gives uint8 [N, H, W] in one forward pass; a sequence
    of arrays or files of any sizes gives a list, each consecutive run of one size batched."""
    backend_run = self.backend.logits if logits else self.backend.labels

    def run(group: np.ndarray) -> np.ndarray:  # The protocol: resized, and back.
      return backend_run(test_resize(group, self.resize_to), group.shape[1:3])

    if isinstance(images, np.ndarray):
      return run(check_images(images))
    results, group = [], []
    for image in map(as_image, images):
      if group and image.shape != group[0].shape:
        results.extend(run(np.stack(group)))
        group = []
      group.append(image)
    if group:
      results.extend(run(np.stack(group)))
    return results

  def colorize(self, labels: np.ndarray) -> np.ndarray:
    """uint8 [..., H, W] class ids -> uint8 [..., H, W, 3] in the classes' colours."""
    return masks.colorize(labels, self.palette)

  def overlay(self, image: ImageLike, labels: np.ndarray | None = None) -> np.ndarray:
    """The image blended 50/50 with its mask's colours (uint8 RGB), as ``predict --overlay``
    writes it; the labels are computed when not given."""
    image = as_image(image)
    labels = self(image) if labels is None else labels
    if labels.shape != image.shape[:2]:
      raise UserError(f'labels of size {labels.shape} do not fit an image of size '
                      f'{image.shape[:2]}')
    return masks.blend(image, self.colorize(labels))

  def __repr__(self) -> str:
    return (f'Segmenter({self.source!r}, {self.backend.name}, {self.num_classes} classes of '
            f'{self.dataset.kind})')


# XLA's CPU client sizes its thread pool from this variable when it starts (else one thread per
# core it may run on); read once, at JAX's first use of the CPU in a process.
JAX_THREADS_ENV = 'PJRT_NPROC'


def jax_threads(threads: int) -> None:
  """Runs JAX's CPU computations on ``threads`` threads: sets ``JAX_THREADS_ENV`` before JAX
  starts its CPU client.

  Raises:
    UserError: JAX has started already in this process with another count.
  """
  wanted = str(threads)
  if _jax_started():
    if os.environ.get(JAX_THREADS_ENV) != wanted:
      raise UserError(f'JAX started in this process before threads={threads} was asked for: load '
                      f'the model before anything else uses JAX, or start the process with '
                      f'{JAX_THREADS_ENV}={threads}')
    return
  os.environ[JAX_THREADS_ENV] = wanted


def _jax_started() -> bool:
  """Whether a JAX backend (its CPU client) was created in this process."""
  if 'jax' not in sys.modules:
    return False
  from jax._src import xla_bridge  # No public API tells it without starting one.
  return xla_bridge.backends_are_initialized()


def test_resize(images: np.ndarray, resize_to: Size) -> np.ndarray:
  """uint8 [N, H, W, 3] images of one size -> the same resized to fit ``resize_to`` keeping
  their aspect ratio: the dataset's test Resize, with the function the evaluation pipeline
  applies (``transforms.resize_keep_ratio``); the images themselves when it keeps their size."""
  resized = [transforms.resize_keep_ratio({'image': image}, resize_to)['image']
              for image in images]
  return images if resized[0].shape == images.shape[1:] else np.stack(resized)


def as_image(image: ImageLike) -> np.ndarray:
  """An RGB uint8 [H, W, 3] array, read from a file when given a path."""
  if isinstance(image, (str, os.PathLike)):
    return read_image(image, 'pass an image file (PNG, JPEG, ...)')
  return _checked(np.asarray(image), 'an image must be RGB uint8 [H, W, 3]')


def check_images(images: np.ndarray) -> np.ndarray:
  """uint8 [N, H, W, 3] RGB, or a one-line error that says what was given."""
  return _checked(images, 'images must be RGB uint8 [N, H, W, 3]', leading=1)


def _checked(array: np.ndarray, requirement: str, leading: int = 0) -> np.ndarray:
  if (array.dtype != np.uint8 or array.ndim != 3 + leading or array.shape[-1] != 3
      or not all(array.shape[:-1])):
    raise UserError(f'{requirement}; got {array.dtype} {list(array.shape)}')
  return array
