"""The Open Inference Protocol's tensors on the wire: a REST request body, JSON or the binary
tensor extension, read into kserve's ``InferRequest``; the elements of any request's input,
REST or gRPC, as an array of its shape; and the REST answer, JSON or binary.

Everything read is checked before it is used, and every mistake is a one-line ``InvalidInput``
(HTTP 400, gRPC INVALID_ARGUMENT), never an exception from deep inside a decoder:

* the binary extension's header length (a number that fits the body and ``max_json_bytes``),
* the JSON (the whole body, or the binary extension's header) against strict models: names and
  datatypes are strings, dims non-negative integers, parameters a mapping of scalars,
* each input's data: JSON ``data`` or binary bytes (``binary_data_size``), exactly one of them,
  the binary parts laid end to end and filling the body exactly,
* each input's elements against its shape and datatype: fixed-width bytes are count x width,
  BYTES elements are 4-byte little-endian lengths each followed by that many bytes, inside the
  tensor, exactly count of them; JSON numbers are integers in the datatype's range.

Not kserve's ``InferRequest.from_bytes`` or ``InferInput.as_numpy``: the first turns binary
inputs into Python lists through UTF-8 text (slow for images, and it fails on encoded images),
and neither checks BYTES lengths against the bytes they have (a truncated tensor was a 500).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import numpy as np
import orjson
import pydantic
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest, InferResponse, RequestedOutput
from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr

from bisenet_jax.serve.faults import TooLarge

HEADER_LENGTH = 'inference-header-content-length'

# Bytes per element of each datatype (BYTES: variable).
WIDTHS = {'BOOL': 1, 'UINT8': 1, 'UINT16': 2, 'UINT32': 4, 'UINT64': 8, 'INT8': 1, 'INT16': 2,
          'INT32': 4, 'INT64': 8, 'FP16': 2, 'FP32': 4, 'FP64': 8, 'BYTES': None}
_DTYPES = {'BOOL': np.bool_, 'UINT8': np.uint8, 'UINT16': np.uint16, 'UINT32': np.uint32,
           'UINT64': np.uint64, 'INT8': np.int8, 'INT16': np.int16, 'INT32': np.int32,
           'INT64': np.int64, 'FP16': np.float16, 'FP32': np.float32, 'FP64': np.float64}

_Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
_Parameters = dict[StrictStr, _Scalar]


class _Tensor(pydantic.BaseModel):
  name: StrictStr
  shape: list[Annotated[StrictInt, Field(ge=0)]]
  datatype: Literal[tuple(WIDTHS)]
  parameters: _Parameters | None = None
  data: list | None = None


class _Output(pydantic.BaseModel):
  name: StrictStr
  parameters: _Parameters | None = None


class _Request(pydantic.BaseModel):
  id: StrictStr | None = None
  parameters: _Parameters | None = None
  inputs: list[_Tensor]
  outputs: list[_Output] | None = None


def header_length(value: str | None, max_json_bytes: int) -> int | None:
  """The binary extension's JSON header length (the ``Inference-Header-Content-Length`` header),
  None for a JSON body.

  Raises:
    InvalidInput: not a number.
    TooLarge: over ``max_json_bytes``.
  """
  if value is None:
    return None
  if not value.strip().isdigit():
    raise InvalidInput(f'{HEADER_LENGTH} {value!r} is not a number of bytes: give the length '
                       'of the JSON header')
  length = int(value)
  if length > max_json_bytes:
    raise TooLarge(f'{HEADER_LENGTH} {length} is over the server\'s --max-json-bytes '
                   f'{max_json_bytes}: send the images as binary data')
  return length


def read_request(body: bytes, json_length: int | None, model_name: str,
                 max_json_bytes: int) -> InferRequest:
  """The ``InferRequest`` of a REST body: all JSON (``json_length`` None) or the binary tensor
  extension (a JSON header of ``json_length`` bytes, then each binary input's bytes).

  Raises:
    InvalidInput: anything malformed (module docstring), in one line.
    TooLarge: a JSON body over ``max_json_bytes``.
  """
  if json_length is None and len(body) > max_json_bytes:
    raise TooLarge(f'the JSON body is {len(body)} bytes, over the server\'s --max-json-bytes '
                   f'{max_json_bytes}: send the images as binary data (the binary tensor '
                   'extension) or as image_bytes')
  if json_length is not None and not 0 < json_length <= len(body):
    raise InvalidInput(f'{HEADER_LENGTH} {json_length} does not fit a body of {len(body)} '
                       'bytes')
  header = body if json_length is None else body[:json_length]
  try:
    request = _Request.model_validate_json(header)
  except pydantic.ValidationError as error:
    first = error.errors()[0]
    where = '.'.join(map(str, first['loc'])) or 'body'
    what = 'body' if json_length is None else 'JSON header'
    raise InvalidInput(f'the {what} is not an inference request: {where}: '
                       f'{first["msg"]}') from None
  inputs, raw, offset = [], [], json_length or len(body)
  for tensor in request.inputs:
    parameters = dict(tensor.parameters or {})
    size = parameters.get('binary_data_size')
    inputs.append(InferInput(tensor.name, list(tensor.shape), tensor.datatype, data=tensor.data,
                             parameters=parameters))
    if size is None:
      if tensor.data is None:
        raise InvalidInput(f'input {tensor.name!r} has no data: give "data", or its bytes after '
                           'the JSON header with "parameters": {"binary_data_size": N}')
      raw.append(None)
      continue
    if json_length is None:
      raise InvalidInput(f'input {tensor.name!r} gives binary_data_size, but the body is all '
                         f'JSON: send the {HEADER_LENGTH} header')
    if tensor.data is not None:
      raise InvalidInput(f'input {tensor.name!r} gives both "data" and binary_data_size: give '
                         'one')
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
      raise InvalidInput(f'input {tensor.name!r}: binary_data_size {size!r} is not a number of '
                         'bytes')
    if offset + size > len(body):
      raise InvalidInput(f'input {tensor.name!r}: binary_data_size {size} does not fit the '
                         f'{len(body) - offset} bytes left in the body')
    raw.append(body[offset:offset + size])
    offset += size
    _check_binary(inputs[-1], raw[-1])
  if offset != len(body):
    raise InvalidInput(f'the body has {len(body) - offset} bytes after its last input: each '
                       'binary input\'s binary_data_size must count its bytes exactly')
  outputs = [RequestedOutput(output.name, dict(output.parameters or {}))
             for output in request.outputs or ()]
  for output in outputs:
    if not isinstance(output.parameters.get('binary_data', False), bool):
      raise InvalidInput(f'output {output.name!r}: binary_data must be true or false')
  parameters = dict(request.parameters or {})
  if not isinstance(parameters.get('binary_data_output', False), bool):
    raise InvalidInput('binary_data_output must be true or false')
  result = InferRequest(model_name, inputs, request.id, parameters=parameters,
                        request_outputs=outputs or None)
  for tensor, data in zip(inputs, raw):
    tensor._raw_data = data  # What kserve's InferRequest(raw_inputs=...) sets.
  return result


def _check_binary(tensor, raw: bytes) -> None:
  """A binary input's bytes against its shape and datatype, before anything is decoded."""
  count = math.prod(tensor.shape)
  if tensor.datatype == 'BYTES':
    bytes_elements(raw, count, tensor.name)
  elif len(raw) != count * WIDTHS[tensor.datatype]:
    raise InvalidInput(f'input {tensor.name!r} has {len(raw)} bytes, not the '
                       f'{count * WIDTHS[tensor.datatype]} of {tensor.datatype} {tensor.shape}')


def checked_shape(tensor) -> list[int]:
  """The input's shape, every dim a non-negative integer (gRPC's are signed)."""
  shape = [int(dim) for dim in tensor.shape]
  if any(dim < 0 for dim in shape):
    raise InvalidInput(f'input {tensor.name!r}: shape {shape} has a negative dim')
  return shape


def input_array(tensor) -> np.ndarray:
  """The input's elements as an array of its shape: its datatype's numbers, or ``bytes`` objects
  for BYTES, from binary data (REST or gRPC) or listed data (JSON, gRPC contents).

  Raises:
    InvalidInput: the elements do not match the shape and datatype (module docstring).
  """
  shape = checked_shape(tensor)
  count = math.prod(shape)
  name, datatype = tensor.name, tensor.datatype
  if datatype not in WIDTHS:
    raise InvalidInput(f'input {name!r}: unknown datatype {datatype!r}')
  raw = tensor._raw_data  # Binary data: kserve keeps it here (REST binary, gRPC raw contents).
  if raw is not None:
    raw = bytes(raw)
    if datatype == 'BYTES':
      return _object_array(bytes_elements(raw, count, name)).reshape(shape)
    _check_binary(tensor, raw)
    return np.frombuffer(raw, _DTYPES[datatype]).reshape(shape)
  data = tensor.data
  if data is None:
    raise InvalidInput(f'input {name!r} has no data')
  if datatype == 'BYTES':
    elements = list(_flat(data, name))
    if len(elements) != count:
      raise InvalidInput(f'input {name!r} holds {len(elements)} elements, its shape {shape} says '
                         f'{count}')
    return _object_array([e.encode() if isinstance(e, str) else bytes(e)
                          for e in elements]).reshape(shape)
  return _number_array(data, name, datatype, shape, count)


def bytes_elements(raw: bytes, count: int, name: str) -> list[bytes]:
  """The ``count`` elements of a binary BYTES tensor: each a 4-byte little-endian length, then
  that many bytes; nothing may be left over or missing."""
  elements, offset = [], 0
  view = memoryview(raw)
  while offset < len(raw):
    if len(elements) == count:
      break
    if offset + 4 > len(raw):
      raise InvalidInput(f'input {name!r}: element {len(elements)} has a truncated length prefix '
                         f'({len(raw) - offset} of 4 bytes)')
    length = int.from_bytes(view[offset:offset + 4], 'little')
    offset += 4
    if length > len(raw) - offset:
      raise InvalidInput(f'input {name!r}: element {len(elements)} says {length} bytes, '
                         f'{len(raw) - offset} are left: each element is a 4-byte little-endian '
                         'length and then that many bytes')
    elements.append(bytes(view[offset:offset + length]))
    offset += length
  if len(elements) != count or offset != len(raw):
    extra = f' and {len(raw) - offset} bytes more' if offset != len(raw) else ''
    raise InvalidInput(f'input {name!r} holds {len(elements)} elements{extra}, its shape says '
                       f'{count}')
  return elements


def _object_array(elements: list) -> np.ndarray:
  array = np.empty(len(elements), np.object_)
  array[:] = elements
  return array


def _flat(data, name: str):
  for item in data:
    if isinstance(item, list):
      yield from _flat(item, name)
    elif isinstance(item, (str, bytes)):
      yield item
    else:
      raise InvalidInput(f'input {name!r}: BYTES data holds {type(item).__name__} values, '
                         'not strings')


def _number_array(data, name: str, datatype: str, shape: list[int], count: int) -> np.ndarray:
  dtype = np.dtype(_DTYPES[datatype])
  try:
    array = np.asarray(data)
  except (ValueError, TypeError):
    raise InvalidInput(f'input {name!r}: its data is not a list of numbers (nested lists must '
                       'be of equal lengths)') from None
  if array.size != count:
    raise InvalidInput(f'input {name!r} holds {array.size} elements, its shape {shape} says '
                       f'{count}')
  if dtype.kind in 'iu':
    if array.size and array.dtype.kind not in 'iu':
      raise InvalidInput(f'input {name!r}: {datatype} data must be integers')
    info = np.iinfo(dtype)
    if array.size and (array.min() < info.min or array.max() > info.max):
      raise InvalidInput(f'input {name!r}: {datatype} values are {info.min} to {info.max}')
  elif dtype.kind == 'b':
    if array.size and array.dtype.kind != 'b':
      raise InvalidInput(f'input {name!r}: BOOL data must be true or false')
  elif array.size and array.dtype.kind not in 'iuf':
    raise InvalidInput(f'input {name!r}: {datatype} data must be numbers')
  return array.astype(dtype).reshape(shape)


def binary_output(request: InferRequest, name: str) -> bool:
  """Whether a REST answer carries output ``name`` as binary data: the output's own
  ``binary_data`` where the request names it with one, else the request's
  ``binary_data_output`` (default false: JSON)."""
  for output in request.request_outputs or ():
    if output.name == name and output.binary_data is not None:
      return output.binary_data
  return bool((request.parameters or {}).get('binary_data_output', False))


def encode_answer(response: InferResponse, request: InferRequest) -> tuple[bytes, dict]:
  """A REST answer's body and headers: JSON, or the binary extension's JSON header followed by
  each binary output's bytes when any output is binary (``binary_output``).

  Not kserve's ``InferResponse.to_rest``: it ignores ``binary_data_output`` for the outputs a
  request names (they came back as JSON), and writes JSON numbers through a Python list per
  element; here ``orjson`` writes them from the array.
  """
  outputs, parts = [], []
  for output in response.outputs:
    entry = {'name': output.name, 'shape': list(output.shape), 'datatype': output.datatype}
    raw = output._raw_data  # The model sets every output as binary data (model._outputs).
    if binary_output(request, output.name):
      entry['parameters'] = {'binary_data_size': len(raw)}
      parts.append(raw)
    elif output.datatype == 'BYTES':
      raise InvalidInput(f'output {output.name!r} holds bytes, which JSON cannot: ask for it '
                         'with "parameters": {"binary_data": true}')
    else:
      entry['data'] = np.frombuffer(raw, _DTYPES[output.datatype])
    outputs.append(entry)
  header = orjson.dumps({'id': response.id, 'model_name': response.model_name,
                         'model_version': response.model_version, 'outputs': outputs,
                         'parameters': response.parameters},
                        option=orjson.OPT_SERIALIZE_NUMPY)
  if not parts:
    return header, {'content-type': 'application/json'}
  return header + b''.join(parts), {'content-type': 'application/octet-stream',
                                    HEADER_LENGTH: str(len(header))}
