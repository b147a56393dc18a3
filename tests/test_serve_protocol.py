"""The server's reading of malformed bodies and its answers in binary or JSON, REST and gRPC.

Every malformed body is a one-line 400 (gRPC INVALID_ARGUMENT) and leaves no traceback in the
server's log; the server's log is checked after each. The outputs are asked in every combination
of the request's ``binary_data_output`` and each output's ``binary_data``, with tritonclient and
with raw HTTP.
"""

import json
import struct

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bisenet_jax.data.masks import encode_index_png
from bisenet_jax.segmenter import Segmenter

from serve_support import (LoggedServer, binary_body, grpc_request, image_body, serialized,
                           tensor_header)
from test_evaluate import write_red_channel_model
from test_serve import MODEL, png_bytes, scenes

PIXELS = np.zeros((1, 8, 8, 3), np.uint8).tobytes()
PNG = png_bytes(np.zeros((8, 8, 3), np.uint8))


@pytest.fixture(scope='module')
def red_model(tmp_path_factory):
  return write_red_channel_model(tmp_path_factory.mktemp('protocol') / 'red.onnx')


@pytest.fixture(scope='module')
def segmenter(red_model):
  return Segmenter.load(red_model)


@pytest.fixture(scope='module')
def server(red_model, tmp_path_factory):
  running = LoggedServer(red_model, tmp_path_factory.mktemp('protocol_log') / 'server.log',
                         '--max-batch-size', '4', '--max-pixels', str(64 * 128),
                         '--max-request-bytes', str(300_000))
  yield running
  running.stop()


def image_input(**overrides):
  return {**tensor_header(binary_data_size=len(PIXELS)), **overrides}


def bytes_input(size, shape=(1,)):
  return tensor_header('image_bytes', 'BYTES', shape, binary_data_size=size)


def header_of_length(header: bytes, length: str, tail=b''):
  return header + tail, {'inference-header-content-length': length}


# Each: (body, headers), a part of the one-line reason.
MALFORMED = {
    'BYTES length prefix truncated': (
        binary_body({'inputs': [bytes_input(3)]}, b'\x05\x00\x00'), 'truncated length prefix'),
    'BYTES length prefix 2^31-1': (
        binary_body({'inputs': [bytes_input(8)]}, struct.pack('<I', 2**31 - 1) + b'abcd'),
        'says 2147483647 bytes, 4 are left'),
    'BYTES length prefix past its tensor': (
        binary_body({'inputs': [bytes_input(8), image_input()]},
                    struct.pack('<I', 6) + b'abcd', PIXELS),
        'says 6 bytes, 4 are left'),
    'BYTES fewer elements than the shape': (
        binary_body({'inputs': [bytes_input(len(serialized(PNG)), shape=(2,))]},
                    serialized(PNG)), 'holds 1 elements'),
    'BYTES bytes after the last element': (
        binary_body({'inputs': [bytes_input(len(serialized(PNG)) + 3)]},
                    serialized(PNG) + b'xyz'), 'and 3 bytes more'),
    'string dimension': (binary_body({'inputs': [image_input(shape=['1', 8, 8, 3])]}, PIXELS),
                         'inputs.0.shape.0: Input should be a valid integer'),
    'null dimension': (binary_body({'inputs': [image_input(shape=[None, 8, 8, 3])]}, PIXELS),
                       'inputs.0.shape.0'),
    'negative dimension': (binary_body({'inputs': [image_input(shape=[-1, 8, 8, 3])]}, PIXELS),
                           'greater than or equal to 0'),
    'fractional dimension': (binary_body({'inputs': [image_input(shape=[1.5, 8, 8, 3])]}, PIXELS),
                             'inputs.0.shape.0'),
    'parameters a list': (binary_body({'inputs': [image_input()], 'parameters': [1]}, PIXELS),
                          'parameters: Input should be an object'),
    'input parameters a list': (binary_body({'inputs': [image_input(parameters=[1])]}, PIXELS),
                                'inputs.0.parameters'),
    'inputs an object': (binary_body({'inputs': {'name': 'image'}}), 'inputs: Input should be a'),
    'no inputs': (binary_body({'outputs': []}), 'inputs: Field required'),
    'header a list': (header_of_length(b'[1, 2]', '6'), 'is not an inference request'),
    'header not JSON': (header_of_length(b'{"inputs": [', '12'), 'is not an inference request'),
    'header not UTF-8': (header_of_length(b'{"id": "\xff"}', '11'), 'not an inference request'),
    'header length not a number': (header_of_length(b'{}', 'abc'), 'is not a number of bytes'),
    'header length zero': (header_of_length(b'{}', '0'), 'does not fit a body of 2 bytes'),
    'header length over the body': (header_of_length(b'{}', '99'), 'does not fit a body'),
    'unknown datatype': (binary_body({'inputs': [image_input(datatype='UINT9')]}, PIXELS),
                         'inputs.0.datatype'),
    'datatype a number': (binary_body({'inputs': [image_input(datatype=8)]}, PIXELS),
                          'inputs.0.datatype'),
    'name a number': (binary_body({'inputs': [image_input(name=1)]}, PIXELS), 'inputs.0.name'),
    'id a number': (binary_body({'id': 7, 'inputs': [image_input()]}, PIXELS), 'id: Input'),
    'binary_data_size negative': (
        binary_body({'inputs': [tensor_header(binary_data_size=-1)]}, PIXELS),
        'binary_data_size -1 is not a number of bytes'),
    'binary_data_size a string': (
        binary_body({'inputs': [tensor_header(binary_data_size='192')]}, PIXELS),
        "binary_data_size '192' is not a number of bytes"),
    'binary_data_size over the body': (
        binary_body({'inputs': [tensor_header(binary_data_size=10**12)]}, PIXELS),
        'does not fit the 192 bytes left'),
    'bytes after the last input': (binary_body({'inputs': [image_input()]}, PIXELS, b'junk'),
                                   '4 bytes after its last input'),
    'data and binary_data_size': (
        binary_body({'inputs': [image_input(data=[0] * 192)]}, PIXELS), 'gives both'),
    'input without data': (binary_body({'inputs': [tensor_header()]}), 'has no data'),
    'binary size not the shape\'s': (
        binary_body({'inputs': [tensor_header(binary_data_size=10)]}, bytes(10)),
        'has 10 bytes, not the 192 of UINT8 [1, 8, 8, 3]'),
    'binary_data_output a string': (
        binary_body({'inputs': [image_input()], 'parameters': {'binary_data_output': 'yes'}},
                    PIXELS), 'binary_data_output must be true or false'),
    'binary_data a number': (
        binary_body({'inputs': [image_input()],
                     'outputs': [{'name': 'labels', 'parameters': {'binary_data': 1}}]}, PIXELS),
        'binary_data must be true or false'),
    'JSON: binary_data_size without the header': (
        (json.dumps({'inputs': [image_input()]}), {}), 'the body is all JSON'),
    'JSON: values over 255': (
        (json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 1, 1, 3],
                                 'data': [256, 0, 0]}]}), {}), 'UINT8 values are 0 to 255'),
    'JSON: fractions': (
        (json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 1, 1, 3],
                                 'data': [0.5, 0, 0]}]}), {}), 'must be integers'),
    'JSON: fewer values than the shape': (
        (json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 2, 2, 3],
                                 'data': [0, 0, 0]}]}), {}), 'holds 3 elements'),
    'JSON: ragged nesting': (
        (json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 1, 2, 3],
                                 'data': [[0, 0, 0], [0, 0]]}]}), {}), 'equal lengths'),
    'JSON: strings as UINT8': (
        (json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': [1, 1, 1, 3],
                                 'data': ['a', 'b', 'c']}]}), {}), 'must be integers'),
    'JSON: numbers as BYTES': (
        (json.dumps({'inputs': [{'name': 'image_bytes', 'datatype': 'BYTES', 'shape': [1],
                                 'data': [5]}]}), {}), 'not strings'),
    'JSON: shape of 10^18 images': (
        (json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8',
                                 'shape': [10**18, 1, 1, 3], 'data': [0, 0, 0]}]}), {}),
        '--max-batch-size'),
}


@pytest.mark.parametrize('case', MALFORMED)
def test_a_malformed_body_is_a_one_line_400_with_no_traceback(server, case):
  (body, headers), reason = MALFORMED[case]
  response = server.post(body, headers)
  assert response.status_code == 400, response.text
  error = response.json()['error']
  assert reason in error, error
  assert '\n' not in error and len(error) < 300
  assert 'Traceback' not in server.log_text()
  assert server.http.is_server_live()


GRPC_MALFORMED = {
    'BYTES length prefix truncated': (
        grpc_request('image_bytes', 'BYTES', [1], raw=b'\x05\x00\x00'), 'truncated length prefix'),
    'BYTES length prefix 2^31-1': (
        grpc_request('image_bytes', 'BYTES', [1], raw=struct.pack('<I', 2**31 - 1) + b'abcd'),
        'says 2147483647 bytes'),
    'BYTES two elements, one sent': (
        grpc_request('image_bytes', 'BYTES', [2], raw=serialized(PNG)), 'holds 1 elements'),
    'BYTES contents fewer than the shape': (
        grpc_request('image_bytes', 'BYTES', [2], bytes_contents=[PNG]), 'holds 1 elements'),
    'raw bytes not the shape\'s': (grpc_request('image', 'UINT8', [1, 8, 8, 3], raw=bytes(10)),
                                   'has 10 bytes, not the 192'),
    'negative dimension': (grpc_request('image', 'UINT8', [-1, 8, 8, 3], raw=PIXELS),
                           'negative dim'),
    'contents over 255': (grpc_request('image', 'UINT8', [1, 1, 1, 3], uint_contents=[256, 0, 0]),
                          'UINT8 values are 0 to 255'),
}


@pytest.mark.parametrize('case', GRPC_MALFORMED)
def test_a_malformed_grpc_request_is_invalid_argument_with_no_traceback(server, case):
  request, reason = GRPC_MALFORMED[case]
  with pytest.raises(grpc.RpcError) as error:
    server.infer_raw(request)
  assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
  assert reason in error.value.details() and '\n' not in error.value.details()
  assert 'Traceback' not in server.log_text()


# ---------------------------------------------------------------------------------------------
# Outputs as binary data or JSON: the request's binary_data_output, each output's binary_data.


def split_answer(response):
  """(JSON part, {output name: its binary bytes}) of a REST answer."""
  length = response.headers.get('inference-header-content-length')
  if length is None:
    return response.json(), {}
  header = json.loads(response.content[:int(length)])
  parts, offset = {}, int(length)
  for output in header['outputs']:
    size = (output.get('parameters') or {}).get('binary_data_size')
    if size is not None:
      parts[output['name']] = response.content[offset:offset + size]
      offset += size
  assert offset == len(response.content)
  return header, parts


def expected_binary(request_flag, own_flag):
  """The protocol's rule: an output's own binary_data, else the request's binary_data_output."""
  return own_flag if own_flag is not None else bool(request_flag)


OUTPUT_CASES = [(request_flag, tuple(names), own)
                for request_flag in (None, False, True)
                for names in ((), ('labels',), ('mask_png',), ('labels', 'mask_png'))
                for own in ((None, None, None), (True, True, True), (False, False, False),
                            (False, True, None), (True, False, None))
                if names or own == (None, None, None)]


def output_case_id(case):
  request_flag, names, own = case
  named = ','.join(f'{name}:{flag}' for name, flag in zip(names, own)) or 'none named'
  return f'binary_data_output:{request_flag} {named}'


@pytest.mark.parametrize('request_flag,names,own', OUTPUT_CASES,
                         ids=[output_case_id(case) for case in OUTPUT_CASES])
def test_outputs_come_as_binary_or_json_as_asked_over_raw_http(server, segmenter, request_flag,
                                                               names, own):
  image = scenes(1, (4, 5), seed=5)
  outputs = [{'name': name, **({'parameters': {'binary_data': flag}} if flag is not None else {})}
             for name, flag in zip(names, own)]
  parameters = {} if request_flag is None else {'binary_data_output': request_flag}
  body, headers = image_body(image.shape, outputs=outputs or None, parameters=parameters)
  body = body[:-image.size] + image.tobytes()
  response = server.post(body, headers)
  binary = {name: expected_binary(request_flag, flag) for name, flag in zip(names, own)}
  if not names:
    binary = {'labels': bool(request_flag)}
  if binary.get('mask_png') is False:  # PNG bytes cannot be JSON text: refused before any work.
    assert response.status_code == 400, response.text
    assert "'mask_png' holds PNG bytes: ask for it as binary data" in response.json()['error']
    return
  assert response.status_code == 200, response.text
  header, parts = split_answer(response)
  want = segmenter.batch(image)
  assert [output['name'] for output in header['outputs']] == list(binary)
  for output in header['outputs']:
    name = output['name']
    assert (name in parts) == binary[name] and ('data' in output) == (not binary[name])
    if name == 'labels':
      labels = (np.frombuffer(parts[name], np.uint8) if binary[name]
                else np.array(output['data'], np.uint8))
      np.testing.assert_array_equal(labels.reshape(output['shape']), want)
    else:
      assert parts[name] == serialized(encode_index_png(want[0], segmenter.palette))
  assert set(header['parameters']) == {'server_ms', 'compute_ms', 'batch_size'}
  assert 'Traceback' not in server.log_text()


# tritonclient names each output with its binary_data, or none with binary_data_output true
# (it reserves that parameter for itself).
TRITON_CASES = {
    'no outputs named': None,
    'labels binary': {'labels': True},
    'labels JSON': {'labels': False},
    'mask_png binary': {'mask_png': True},
    'both binary': {'labels': True, 'mask_png': True},
    'labels JSON, mask_png binary': {'labels': False, 'mask_png': True},
}


@pytest.mark.parametrize('case', TRITON_CASES)
def test_outputs_as_asked_with_tritonclient(server, segmenter, case):
  outputs = TRITON_CASES[case]
  image = scenes(1, (6, 7), seed=6)
  tensor = httpclient.InferInput('image', list(image.shape), 'UINT8')
  tensor.set_data_from_numpy(image, binary_data=True)
  requested = None if outputs is None else [
      httpclient.InferRequestedOutput(name, binary_data=flag) for name, flag in outputs.items()]
  result = server.http.infer(MODEL, [tensor], outputs=requested)
  want = segmenter.batch(image)
  for output in result.get_response()['outputs']:
    binary = outputs is None or outputs[output['name']]
    assert ('data' in output) == (not binary)
  if outputs is None or 'labels' in outputs:
    np.testing.assert_array_equal(result.as_numpy('labels'), want)
  if outputs and 'mask_png' in outputs:
    assert bytes(result.as_numpy('mask_png')[0]) == encode_index_png(want[0], segmenter.palette)


def test_mask_png_as_json_is_refused_in_one_line_with_tritonclient(server):
  tensor = httpclient.InferInput('image', [1, 2, 2, 3], 'UINT8')
  tensor.set_data_from_numpy(np.zeros((1, 2, 2, 3), np.uint8))
  with pytest.raises(InferenceServerException, match='ask for it as binary data'):
    server.http.infer(MODEL, [tensor], outputs=[
        httpclient.InferRequestedOutput('mask_png', binary_data=False)])


def test_grpc_answers_both_outputs_whatever_the_flags(server, segmenter):
  """gRPC carries bytes: mask_png needs no flag there."""
  image = scenes(1, (3, 4), seed=7)
  tensor = grpcclient.InferInput('image', list(image.shape), 'UINT8')
  tensor.set_data_from_numpy(image)
  result = server.grpc.infer(MODEL, [tensor], outputs=[
      grpcclient.InferRequestedOutput('mask_png'), grpcclient.InferRequestedOutput('labels')])
  want = segmenter.batch(image)
  np.testing.assert_array_equal(result.as_numpy('labels'), want)
  assert bytes(result.as_numpy('mask_png')[0]) == encode_index_png(want[0], segmenter.palette)


# ---------------------------------------------------------------------------------------------
# Routes the server does not have.

ABSENT_ROUTES = {
    'load': ('POST', f'/v2/repository/models/{MODEL}/load', 501, 'repository extension'),
    'unload': ('POST', f'/v2/repository/models/{MODEL}/unload', 501, 'repository extension'),
    'load another': ('POST', '/v2/repository/models/other/load', 501, 'repository extension'),
    'index': ('POST', '/v2/repository/index', 501, 'repository extension'),
    'versioned infer': ('POST', f'/v2/models/{MODEL}/versions/1/infer', 501, 'versions'),
    'versioned metadata': ('GET', f'/v2/models/{MODEL}/versions/1', 501, 'versioning'),
    'no such route': ('GET', '/v2/nothing', 404, 'Not Found'),
    'wrong method': ('GET', f'/v2/models/{MODEL}/infer', 405, 'Method Not Allowed'),
}


@pytest.mark.parametrize('case', ABSENT_ROUTES)
def test_routes_the_server_does_not_have_are_one_line_refusals(server, case):
  method, path, status, words = ABSENT_ROUTES[case]
  response = httpx.request(method, server.base + path, content=b'{}', timeout=30)
  assert response.status_code == status, response.text
  error = response.json()['error']
  assert words in error and '\n' not in error
  assert 'Traceback' not in server.log_text()


@pytest.mark.parametrize('call', ['load_model', 'unload_model', 'get_model_repository_index'])
def test_grpc_repository_calls_are_unimplemented_in_one_line(server, call):
  arguments = () if call == 'get_model_repository_index' else (MODEL,)
  with pytest.raises(InferenceServerException) as error:
    getattr(server.grpc, call)(*arguments)
  assert error.value.status() == 'StatusCode.UNIMPLEMENTED'
  assert '\n' not in error.value.message()
  assert 'Traceback' not in server.log_text()
