"""The served model: a kserve ``Model`` whose ``predict`` checks an Open Inference Protocol
request, has it admitted, decodes its images, waits for its batch and answers ``labels`` and/or
``mask_png``.

kserve decodes the protocol (JSON or the binary tensor extension, REST or gRPC) into an
``InferRequest`` and encodes the ``InferResponse``; everything about images is here. Every
mistake in a request is a one-line ``InvalidInput`` (HTTP 400, gRPC INVALID_ARGUMENT), raised
before the request is queued. Decoding and PNG encoding run on worker threads, off the event
loop that serves every connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from pathlib import Path

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from bisenet_jax.data import images as image_files
from bisenet_jax.data import masks
from bisenet_jax.errors import UserError
from bisenet_jax.serve import protocol
from bisenet_jax.serve.batching import QueueFull, Stopped
from bisenet_jax.serve.spec import Limits

IMAGE, IMAGE_BYTES, LABELS, MASK_PNG = 'image', 'image_bytes', 'labels', 'mask_png'
INPUTS = [{'name': IMAGE, 'datatype': 'UINT8', 'shape': [-1, -1, -1, 3]},
          {'name': IMAGE_BYTES, 'datatype': 'BYTES', 'shape': [-1]}]
OUTPUTS = [{'name': LABELS, 'datatype': 'UINT8', 'shape': [-1, -1, -1]},
           {'name': MASK_PNG, 'datatype': 'BYTES', 'shape': [-1]}]
_SEND = f"send '{IMAGE}' (UINT8 [N, H, W, 3] RGB) or '{IMAGE_BYTES}' (BYTES [N], PNG or JPEG)"

# When the request reached the server (time.perf_counter()), set by the REST middleware; a
# gRPC request's clock starts when kserve hands it over, after its (cheap) decoding.
ARRIVAL: contextvars.ContextVar[float] = contextvars.ContextVar('arrival')
# When a request still waiting for its forward pass is refused (time.monotonic()): the REST
# gate's and the gRPC interceptor's, from --request-timeout-s and the client's gRPC deadline.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar('deadline', default=None)


@dataclasses.dataclass(frozen=True)
class Images:
  """A request's images as it declares them, checked before any is decoded.

  Attributes:
    count: N, the number of images.
    size: (H, W) of every image.
    tensor: the request's input.
    encoded: the encoded files of ``image_bytes``; None for ``image``.
  """
  count: int
  size: tuple[int, int]
  tensor: object
  encoded: tuple[bytes, ...] | None = None


def request_images(request: InferRequest, limits: Limits) -> np.ndarray:
  """The request's uint8 [N, H, W, 3] RGB images, or a one-line ``InvalidInput``."""
  return decode_images(declared_images(request, limits))


def declared_images(request: InferRequest, limits: Limits) -> Images:
  """The count and size of the request's images from its input's shape (``image``) or the
  files' headers (``image_bytes``), every limit checked: nothing is decoded yet."""
  names = [tensor.name for tensor in request.inputs]
  unknown = [name for name in names if name not in (IMAGE, IMAGE_BYTES)]
  if unknown:
    raise InvalidInput(f'unknown input {unknown[0]!r}: {_SEND}')
  if len(names) != 1:
    raise InvalidInput(f'{"no input" if not names else "inputs " + ", ".join(names)}: {_SEND}, '
                       'exactly one')
  tensor = request.inputs[0]
  if tensor.name == IMAGE:
    return _declared_array(tensor, limits)
  return _declared_files(tensor, limits)


def decode_images(images: Images) -> np.ndarray:
  """The declared images as uint8 [N, H, W, 3] RGB (files decoded, arrays read)."""
  if images.encoded is None:
    return protocol.input_array(images.tensor)
  decoded = []
  for index, data in enumerate(images.encoded):
    try:
      decoded.append(image_files.decode_image(data, f'{IMAGE_BYTES}[{index}]',
                                              'send a PNG or JPEG'))
    except UserError as error:
      raise InvalidInput(str(error)) from None
  return np.stack(decoded)


def _declared_array(tensor, limits: Limits) -> Images:
  shape = protocol.checked_shape(tensor)
  if tensor.datatype != 'UINT8':
    raise InvalidInput(f"input '{IMAGE}' must be UINT8, not {tensor.datatype}")
  if len(shape) != 4 or shape[3] != 3 or min(shape) < 1:
    raise InvalidInput(f"input '{IMAGE}' must have shape [N, H, W, 3] with N, H, W >= 1, not "
                       f'{shape}')
  _check_count(IMAGE, shape[0], limits)
  _check_pixels(IMAGE, shape[1:3], limits)
  return Images(shape[0], (shape[1], shape[2]), tensor)


def _declared_files(tensor, limits: Limits) -> Images:
  shape = protocol.checked_shape(tensor)
  if tensor.datatype != 'BYTES':
    raise InvalidInput(f"input '{IMAGE_BYTES}' must be BYTES, not {tensor.datatype}")
  if len(shape) != 1 or shape[0] < 1:
    raise InvalidInput(f"input '{IMAGE_BYTES}' must have shape [N] with N >= 1, not {shape}")
  _check_count(IMAGE_BYTES, shape[0], limits)
  encoded = tuple(protocol.input_array(tensor))
  sizes = []
  for index, data in enumerate(encoded):
    name = f'{IMAGE_BYTES}[{index}]'
    try:
      # The size from the header: an image over the limit is never decoded.
      sizes.append(image_files.image_size(data, 'send a PNG or JPEG'))
    except UserError as error:
      raise InvalidInput(str(error)) from None
    _check_pixels(name, sizes[-1], limits)
  if len(set(sizes)) > 1:
    raise InvalidInput(f"the images of '{IMAGE_BYTES}' have several sizes "
                       f'({", ".join(f"{h}x{w}" for h, w in sorted(set(sizes)))}): send images '
                       'of one size per request')
  return Images(len(encoded), tuple(sizes[0]), tensor, encoded)


def check_json_answer(request: InferRequest, names: list[str], images: Images,
                      limits: Limits) -> None:
  """Labels asked as JSON (REST) are refused before any work when they could be over
  ``max_json_bytes``: up to 4 bytes per value ('255,')."""
  if request.from_grpc or LABELS not in names or protocol.binary_output(request, LABELS):
    return
  values = images.count * images.size[0] * images.size[1]
  if values * 4 > limits.max_json_bytes:
    raise InvalidInput(f"'{LABELS}' as JSON would be {values} numbers, up to {values * 4} bytes, "
                       f"over the server's --max-json-bytes {limits.max_json_bytes}: ask for it "
                       'as binary data, "parameters": {"binary_data": true}')


def _check_count(name: str, count: int, limits: Limits) -> None:
  if count > limits.max_batch_size:
    raise InvalidInput(f'{name!r} holds {count} images, more than the server\'s '
                       f'--max-batch-size {limits.max_batch_size}: send them in several requests')


def _check_pixels(name: str, size, limits: Limits) -> None:
  if size[0] * size[1] > limits.max_pixels:
    raise InvalidInput(f'{name!r} is {size[0]}x{size[1]}, more than the server\'s --max-pixels '
                       f'{limits.max_pixels} pixels per image: send a smaller image')


def requested_outputs(request: InferRequest) -> list[str]:
  """The outputs a request names (default: ``labels``), or a one-line ``InvalidInput``.

  ``mask_png`` over REST must be asked as binary data (its own ``binary_data`` or the request's
  ``binary_data_output``): JSON holds text, not PNG bytes. gRPC always carries bytes.
  """
  requested = request.request_outputs or ()
  for output in requested:
    if output.name not in (LABELS, MASK_PNG):
      raise InvalidInput(f"unknown output {output.name!r}: ask for '{LABELS}' and/or "
                         f"'{MASK_PNG}'")
    if (output.name == MASK_PNG and not request.from_grpc
        and not protocol.binary_output(request, MASK_PNG)):
      raise InvalidInput(f"'{MASK_PNG}' holds PNG bytes: ask for it as binary data, "
                         '"parameters": {"binary_data": true} or "binary_data_output": true')
  return [output.name for output in requested] or [LABELS]


def _outputs(labels: np.ndarray, names: list[str], palette: np.ndarray) -> list[InferOutput]:
  outputs = []
  for name in names:
    if name == LABELS:
      data = np.ascontiguousarray(labels)
      datatype = 'UINT8'
    else:
      data = np.array([masks.encode_index_png(mask, palette) for mask in labels], np.object_)
      datatype = 'BYTES'
    output = InferOutput(name, list(data.shape), datatype)
    # As bytes: kserve encodes them for gRPC as they are, and for REST JSON or binary as asked.
    output.set_data_from_numpy(data, binary_data=True)
    outputs.append(output)
  return outputs


def _parameters(values: dict, grpc: bool) -> dict:
  """Response parameters; over gRPC floats go as strings: kserve's protocol buffer has no
  double parameter."""
  if not grpc:
    return values
  return {key: InferParameter(string_param=repr(value)) if isinstance(value, float) else value
          for key, value in values.items()}


class SegmentationModel(Model):
  """The Open Inference Protocol face of a ``Segmenter`` behind a batcher.

  A request goes through: its outputs and input checked, the count and size of its images read
  from its shape or the files' headers (``declared_images``), the batcher's admission
  (``admit``: a full queue, a request that can never fit, a stopped worker), and only then the
  images decoded (a worker thread) and submitted with the request's deadline (``DEADLINE``). A
  request whose handler is cancelled (the client left) cancels its batcher future: it is
  withdrawn from the queue. The model is ready while it is loaded and the batcher's worker runs.

  ``enable_latency_logging`` stays off (kserve's default for a ``Model``): no log line per
  request.

  Args:
    batcher: ``admit(count, size)``, ``submit(images, deadline)``, ``alive``, ``waiting``,
      ``max_queue`` and ``close`` (``batching.Batcher``).
  """

  def __init__(self, name: str, segmenter, batcher, limits: Limits):
    super().__init__(name)
    self.segmenter, self.batcher, self.limits = segmenter, batcher, limits
    self.ready = True

  @property
  def ready(self) -> bool:
    return self._loaded and self.batcher.alive

  @ready.setter
  def ready(self, loaded: bool) -> None:
    self._loaded = loaded

  def get_input_types(self):
    return INPUTS

  def get_output_types(self):
    return OUTPUTS

  def parameters(self) -> dict:
    """What REST model metadata adds to kserve's (the contract's ``parameters``)."""
    return {'classes': list(self.segmenter.classes.names),
            'palette': self.segmenter.palette.tolist(),
            'network': network_name(self.segmenter), 'backend': self.segmenter.backend.description,
            'max_batch_size': self.limits.max_batch_size}

  def refuse_early(self) -> None:
    """Refuses any request at once, before its body is read, while none could be queued: the
    worker stopped (``Stopped``) or the queue is full (``QueueFull``)."""
    if not self.batcher.alive:
      raise Stopped("the server's worker has stopped: no request can be answered, restart the "
                    'server')
    if self.batcher.waiting >= self.batcher.max_queue:
      raise QueueFull(f'the server is busy ({self.batcher.waiting} images waiting, at most '
                      f'{self.batcher.max_queue}): retry later')

  def admitted_images(self, request: InferRequest, names: list[str]) -> np.ndarray:
    """The request's images once every check and the batcher's admission passed."""
    declared = declared_images(request, self.limits)
    check_json_answer(request, names, declared, self.limits)
    self.batcher.admit(declared.count, declared.size)
    return decode_images(declared)

  async def predict(self, request: InferRequest, headers=None) -> InferResponse:
    arrival = ARRIVAL.get(time.perf_counter())
    names = requested_outputs(request)
    images = await asyncio.to_thread(self.admitted_images, request, names)
    result = await asyncio.wrap_future(self.batcher.submit(images, deadline=DEADLINE.get()))
    outputs = await asyncio.to_thread(_outputs, result.labels, names, self.segmenter.palette)
    parameters = {'server_ms': (time.perf_counter() - arrival) * 1000,
                  'compute_ms': result.compute_s * 1000, 'batch_size': result.batch_size}
    return InferResponse(request.id, self.name, outputs,
                         parameters=_parameters(parameters, request.from_grpc),
                         use_binary_outputs=request.use_binary_outputs,
                         requested_outputs=request.request_outputs)


def network_name(segmenter) -> str:
  """The model file's name: ``Segmenter`` keeps no network name, and the file names the model
  the way its user does (e.g. fcn_bisenetv1_resnet18os32_cityscapes.pth)."""
  return Path(segmenter.source).name
