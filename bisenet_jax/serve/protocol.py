"""The REST body of an inference request, JSON or the binary tensor extension, read into kserve's
``InferRequest``.

Not kserve's ``InferRequest.from_bytes``: it turns binary inputs into Python lists (slow for
images) through UTF-8 strings, which fails on encoded images (BYTES that are not text).
"""

from __future__ import annotations

import json

import pydantic
from kserve import errors
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.rest.v2_datamodels import InferenceRequest


def read_request(dataplane: DataPlane, body: bytes, headers: dict, model_name: str):
  """kserve's ``InferRequest`` of a body, JSON or binary; anything it cannot read is a one-line
  ``InvalidInput`` rather than kserve's 500."""
  try:
    if INFERENCE_CONTENT_LENGTH_HEADER in headers:
      return _binary_request(body, int(headers[INFERENCE_CONTENT_LENGTH_HEADER]), model_name)
    request = InferenceRequest.model_validate_json(body)
    return dataplane.decode(request, headers, PredictorProtocol.REST_V2.value, model_name)[0]
  except errors.InvalidInput:
    raise
  except pydantic.ValidationError as error:
    first = error.errors()[0]
    where = '.'.join(map(str, first['loc'])) or 'body'
    raise errors.InvalidInput(f'the body is not an inference request: {where}: '
                              f'{first["msg"]}') from None
  except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
    raise errors.InvalidInput(f'the body is not an inference request ({type(error).__name__}: '
                              f'{error})') from None


def _binary_request(body: bytes, json_length: int, model_name: str) -> InferRequest:
  """A body of the binary tensor extension: a JSON header, then each binary input's bytes."""
  if not 0 < json_length <= len(body):
    raise errors.InvalidInput(f'{INFERENCE_CONTENT_LENGTH_HEADER} {json_length} does not fit a '
                              f'body of {len(body)} bytes')
  header = json.loads(body[:json_length])
  inputs, raw, offset = [], [], json_length
  for tensor in header['inputs']:
    parameters = tensor.get('parameters') or {}
    inputs.append(InferInput(tensor['name'], tensor['shape'], tensor['datatype'],
                             data=tensor.get('data'), parameters=parameters))
    size = parameters.get('binary_data_size')
    if 'data' in tensor or size is None:
      raw.append(None)
      continue
    if not isinstance(size, int) or size < 0 or offset + size > len(body):
      raise errors.InvalidInput(f"input {tensor['name']!r}: binary_data_size {size} does not "
                                f'fit the body')
    raw.append(body[offset:offset + size])
    offset += size
  outputs = [RequestedOutput(output['name'], output.get('parameters'))
             for output in header.get('outputs') or ()]
  return InferRequest(model_name, inputs, header.get('id'), raw_inputs=raw,
                      parameters=header.get('parameters'), request_outputs=outputs or None)
