"""Tests of ``python -m bisenet_jax.serve``: the server as a subprocess talked to with real Open
Inference Protocol clients (tritonclient HTTP and gRPC); its batching is tests/test_batching.py's.

The quick tier serves a stand-in ``.onnx`` whose labels are each pixel's red value // 14
(tests/test_evaluate.py), in a process where JAX cannot be imported. Where a test needs
requests to wait, the server's forward pass is slowed down in that process. The slow tier
serves a random Fast-SCNN checkpoint on JAX (padded batches).
"""

import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bisenet_jax.data.masks import encode_index_png
from bisenet_jax.segmenter import Segmenter
from bisenet_jax.serve.process import ServerProcess

from conftest import ROOT, free_port
from test_evaluate import write_red_channel_model

MODEL = 'bisenet'
SIZES = ((64, 128), (48, 96))

# ---------------------------------------------------------------------------------------------
# The server, as a subprocess.

# JAX cannot be imported in the server's process: serving an exported file must not need it.
# SLOW_BATCHES > 0 makes each forward pass take that many more seconds. GATE, a folder: each
# forward pass first leaves a file entered-* there, then waits until the file 'open' exists.
SERVER = textwrap.dedent('''
    import os, sys, time
    for name in ('jax', 'jaxlib', 'flax', 'orbax', 'orbax.checkpoint'):
      sys.modules[name] = None
    delay = float(os.environ.get('SLOW_BATCHES', '0'))
    gate = os.environ.get('GATE')
    if delay or gate:
      from pathlib import Path
      from bisenet_jax import segmenter
      labels = segmenter.OnnxBackend.labels

      def held(self, *args):
        if gate:
          Path(gate, f'entered-{time.monotonic_ns()}').touch()
          while not Path(gate, 'open').exists():
            time.sleep(0.01)
        time.sleep(delay)
        return labels(self, *args)

      segmenter.OnnxBackend.labels = held
    from bisenet_jax.serve.__main__ import main
    main(sys.argv[1:])
''')
# The warm-up still compiles and times every batch size, but requests pool into the largest,
# whatever the timings on a busy machine say (padded batches are what a test needs to see).
FULL_BATCHES = textwrap.dedent('''
    import sys
    from bisenet_jax.serve import listeners
    measure = listeners.fastest_batch

    def full_batches(run, sizes, max_batch_size, **kwargs):
      return max_batch_size, measure(run, sizes, max_batch_size, **kwargs)[1]

    listeners.fastest_batch = full_batches
    from bisenet_jax.serve.__main__ import main
    main(sys.argv[1:])
''')
HANG_S = 60  # Only a hang waits this long.


class Gate:
  """A folder a server's forward passes wait at (GATE) until ``open``."""

  def __init__(self, folder):
    self.folder = folder
    folder.mkdir()

  def entered(self) -> int:
    """How many forward passes reached the gate."""
    return len(list(self.folder.glob('entered-*')))

  def open(self):
    (self.folder / 'open').touch()


def wait_until(condition, what):
  deadline = time.monotonic() + HANG_S
  while not condition():
    assert time.monotonic() < deadline, f'not {what} after {HANG_S} s'
    time.sleep(0.01)


class Server(ServerProcess):
  """A running server with its clients."""

  def __init__(self, checkpoint, *flags, slow=0.0, gate=None, preamble=SERVER, timeout=120):
    env = {'SLOW_BATCHES': str(slow), **({'GATE': str(gate.folder)} if gate else {})}
    super().__init__(checkpoint, *flags, preamble=preamble, env=env, cwd=ROOT, timeout_s=timeout)
    self.http = httpclient.InferenceServerClient(self.url, concurrency=16)
    self.grpc = grpcclient.InferenceServerClient(self.grpc_url)

  def post(self, body, headers=None):
    return httpx.post(f'http://{self.url}/v2/models/{MODEL}/infer', content=body,
                      headers=headers or {}, timeout=30)

  def queued_images(self) -> float:
    """Images waiting for a forward pass (its metric)."""
    text = httpx.get(f'http://{self.url}/metrics', timeout=30).text
    return float(re.search(r'^bisenet_queue_images (\S+)$', text, re.M).group(1))

  def stop(self):
    self.close(kill=True)
    self.http.close()
    self.grpc.close()


@pytest.fixture(scope='module')
def red_model(tmp_path_factory):
  return write_red_channel_model(tmp_path_factory.mktemp('serve') / 'red.onnx')


@pytest.fixture(scope='module')
def server(red_model):
  # A batch waits up to 100 ms for others: enough for 16 requests sent at once to meet even on
  # a busy machine (the answers' batch sizes show it), little for the other tests.
  running = Server(red_model, '--max-batch-size', '4', '--max-batch-delay-ms', '100',
                   '--max-pixels', str(64 * 128), '--max-request-bytes', str(300_000))
  yield running
  running.stop()


@pytest.fixture(scope='module')
def segmenter(red_model):
  return Segmenter.load(red_model)


def scenes(count, size, seed):
  """Images whose red values cover many classes."""
  return np.random.default_rng(seed).integers(0, 256, (count, *size, 3), np.uint8)


def png_bytes(image):
  return cv2.imencode('.png', image[..., ::-1])[1].tobytes()


def image_tensor(images, binary=True):
  tensor = httpclient.InferInput('image', list(images.shape), 'UINT8')
  tensor.set_data_from_numpy(images, binary_data=binary)
  return tensor


def http_infer(client, images=None, encoded=None, outputs=('labels',), binary=True):
  """One request (tritonclient's HTTP client is not for several threads: concurrent requests
  go through its ``async_infer``)."""
  if images is not None:
    tensor = image_tensor(images, binary)
  else:
    tensor = httpclient.InferInput('image_bytes', [len(encoded)], 'BYTES')
    tensor.set_data_from_numpy(np.array(encoded, np.object_), binary_data=True)
  requested = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs]
  return client.infer(MODEL, [tensor], outputs=requested)


def test_health_and_metadata_over_rest_and_grpc(server, segmenter):
  assert server.ready_line == (f'serving {MODEL} (red.onnx, float32 ONNX Runtime) on '
                               f'http://{server.url}, gRPC {server.grpc_url}')
  for client in (server.http, server.grpc):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
  metadata = server.http.get_model_metadata(MODEL)
  assert [(t['name'], t['datatype'], t['shape']) for t in metadata['inputs']] == [
      ('image', 'UINT8', [-1, -1, -1, 3]), ('image_bytes', 'BYTES', [-1])]
  assert [(t['name'], t['datatype'], t['shape']) for t in metadata['outputs']] == [
      ('labels', 'UINT8', [-1, -1, -1]), ('mask_png', 'BYTES', [-1])]
  assert metadata['parameters'] == {
      'classes': list(segmenter.classes.names), 'palette': segmenter.palette.tolist(),
      'network': 'red.onnx', 'backend': 'float32 ONNX Runtime', 'max_batch_size': 4}
  grpc_metadata = server.grpc.get_model_metadata(MODEL)
  assert [t.name for t in grpc_metadata.inputs] == ['image', 'image_bytes']
  assert httpx.get(f'http://{server.url}/v2/models').json() == {'models': [MODEL]}


def test_image_and_image_bytes_give_predicts_labels_and_mask_png(server, segmenter):
  images = scenes(2, SIZES[0], seed=0)
  want = segmenter.batch(images)
  assert len(np.unique(want)) > 10
  result = http_infer(server.http, images, outputs=('labels', 'mask_png'))
  np.testing.assert_array_equal(result.as_numpy('labels'), want)
  pngs = result.as_numpy('mask_png')
  assert [bytes(png) for png in pngs] == [encode_index_png(m, segmenter.palette) for m in want]
  parameters = result.get_response()['parameters']
  assert parameters['batch_size'] == 2 and parameters['server_ms'] >= parameters['compute_ms']

  result = http_infer(server.http, encoded=[png_bytes(image) for image in images])
  np.testing.assert_array_equal(result.as_numpy('labels'), want)
  assert result.as_numpy('mask_png') is None  # Only labels unless asked.


def test_grpc_gives_the_same_labels_and_masks(server, segmenter):
  images = scenes(1, SIZES[1], seed=1)
  tensor = grpcclient.InferInput('image', list(images.shape), 'UINT8')
  tensor.set_data_from_numpy(images)
  result = server.grpc.infer(MODEL, [tensor], outputs=[
      grpcclient.InferRequestedOutput('labels'), grpcclient.InferRequestedOutput('mask_png')])
  want = segmenter.batch(images)
  np.testing.assert_array_equal(result.as_numpy('labels'), want)
  assert bytes(result.as_numpy('mask_png')[0]) == encode_index_png(want[0], segmenter.palette)
  parameters = result.get_response().parameters
  assert parameters['batch_size'].int64_param == 1
  assert float(parameters['server_ms'].string_param) > 0  # gRPC has no double parameter.


def test_a_json_request_gets_a_json_answer(server, segmenter):
  image = scenes(1, (2, 3), seed=2)
  body = {'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': list(image.shape),
                      'data': image.reshape(-1).tolist()}]}
  response = server.post(json.dumps(body), {'content-type': 'application/json'})
  assert response.status_code == 200, response.text
  answer = response.json()
  assert answer['outputs'] == [{'name': 'labels', 'shape': [1, 2, 3], 'datatype': 'UINT8',
                                'data': segmenter(image[0]).reshape(-1).tolist()}]
  assert set(answer['parameters']) == {'server_ms', 'compute_ms', 'batch_size'}


def test_concurrent_requests_of_two_sizes_each_get_their_own_labels(red_model, segmenter,
                                                                    tmp_path):
  gate = Gate(tmp_path / 'gate')
  held = Server(red_model, '--max-batch-size', '4', gate=gate)
  try:
    requests = [scenes(1 + i % 2, SIZES[i % 2], seed=10 + i) for i in range(16)]  # 24 images.
    pending = []
    for images in requests:  # 16 requests in flight at once (the client's 16 connections).
      pending.append(held.http.async_infer(MODEL, [image_tensor(images)]))
    # One batch (4 images at most) held at the gate, 20 or more images waiting behind it: at
    # least 12 of them of the larger size, 4 of the other, so both pool into full batches.
    wait_until(lambda: gate.entered() == 1 and held.queued_images() >= 20, 'queued')
    gate.open()
    answers = [request.get_result() for request in pending]
    for images, answer in zip(requests, answers):
      np.testing.assert_array_equal(answer.as_numpy('labels'), segmenter.batch(images))
    batches = [answer.get_response()['parameters']['batch_size'] for answer in answers]
    assert max(batches) == 4  # Requests did share forward passes, up to --max-batch-size.
  finally:
    held.stop()


def binary_body(header, *tensors):
  head = json.dumps(header).encode()
  return head + b''.join(tensors), {'inference-header-content-length': str(len(head))}


def image_request(shape, datatype='UINT8', name='image', data=None):
  size = int(np.prod(shape)) if data is None else len(data)
  data = bytes(size) if data is None else data
  return binary_body({'inputs': [{'name': name, 'datatype': datatype, 'shape': shape,
                                  'parameters': {'binary_data_size': len(data)}}]}, data)


def bytes_request(*elements):
  serialized = b''.join(len(e).to_bytes(4, 'little') + e for e in elements)
  return binary_body({'inputs': [{'name': 'image_bytes', 'datatype': 'BYTES',
                                  'shape': [len(elements)],
                                  'parameters': {'binary_data_size': len(serialized)}}]},
                     serialized)


BAD_REQUESTS = {
    'unknown input': (image_request([1, 8, 8, 3], name='picture'), "unknown input 'picture'"),
    'no input': (binary_body({'inputs': []}), 'no input'),
    'both inputs': (binary_body({'inputs': [
        {'name': 'image', 'datatype': 'UINT8', 'shape': [1, 1, 1, 3], 'data': [1, 2, 3]},
        {'name': 'image_bytes', 'datatype': 'BYTES', 'shape': [1], 'data': ['x']}]}),
        'inputs image, image_bytes'),
    'datatype': (image_request([1, 8, 8, 3], 'FP32', data=bytes(8 * 8 * 3 * 4)),
                 "'image' must be UINT8, not FP32"),
    'shape': (image_request([8, 8, 3]), 'shape [N, H, W, 3]'),
    'channels': (image_request([1, 8, 8, 4]), 'shape [N, H, W, 3]'),
    'zero images': (image_request([0, 8, 8, 3]), 'shape [N, H, W, 3]'),
    'zero size': (image_request([1, 0, 8, 3]), 'shape [N, H, W, 3]'),
    'data size': (image_request([1, 8, 8, 3], data=bytes(10)), 'not the 192 of UINT8'),
    'too many images': (image_request([5, 8, 8, 3]), 'more than the server\'s --max-batch-size'),
    'too many pixels': (image_request([1, 65, 128, 3]), '--max-pixels 8192'),
    'not an image': (bytes_request(b'not an image'),
                     'Cannot decode the image: the file is corrupt or not an image; send a PNG'),
    'encoded pixels': (bytes_request(png_bytes(np.zeros((100, 100, 3), np.uint8))),
                       "'image_bytes[0]' is 100x100, more than the server's --max-pixels"),
    'two sizes': (bytes_request(png_bytes(np.zeros((4, 4, 3), np.uint8)),
                                png_bytes(np.zeros((4, 5, 3), np.uint8))), 'several sizes'),
    'unknown output': (binary_body({'inputs': [{'name': 'image', 'datatype': 'UINT8',
                                                'shape': [1, 1, 1, 3], 'data': [1, 2, 3]}],
                                    'outputs': [{'name': 'logits'}]}), "unknown output 'logits'"),
    'json mask': ((json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8',
                                           'shape': [1, 1, 1, 3], 'data': [1, 2, 3]}],
                               'outputs': [{'name': 'mask_png'}]}), {}), 'binary_data'),
    'not json': (('{"inputs": [', {}), 'not an inference request'),
    'header length': ((b'{}', {'inference-header-content-length': '99'}), 'does not fit'),
}


@pytest.mark.parametrize('case', BAD_REQUESTS)
def test_a_bad_request_is_a_one_line_400_and_the_server_goes_on(server, case):
  (body, headers), reason = BAD_REQUESTS[case]
  response = server.post(body, headers)
  assert response.status_code == 400, response.text
  error = response.json()['error']
  assert reason in error and '\n' not in error
  assert server.http.is_server_live()


def test_a_body_over_the_limit_is_413_by_length_or_by_chunks(server):
  body, headers = image_request([1, 8, 8, 3], data=bytes(300_001))
  response = server.post(body, headers)
  assert response.status_code == 413 and '--max-request-bytes' in response.json()['error']
  chunks = (bytes(100_000) for _ in range(4))  # No Content-Length: chunked.
  response = server.post(chunks, headers)
  assert response.status_code == 413
  assert server.http.is_server_live()


def test_metrics_count_requests_batches_and_the_queue(server):
  http_infer(server.http, scenes(1, SIZES[0], seed=3))
  server.post(*image_request([8, 8, 3]))
  text = httpx.get(f'http://{server.url}/metrics').text
  assert 'bisenet_requests_total{outcome="ok",protocol="rest"}' in text
  assert 'bisenet_requests_total{outcome="bad_request",protocol="rest"}' in text
  for name in ('bisenet_request_seconds_bucket', 'bisenet_batch_images_bucket',
               'bisenet_compute_seconds_sum', 'bisenet_queue_images 0.0'):
    assert name in text


def test_the_server_process_cannot_import_jax(red_model):
  """Every server of this module runs this way: an exported file is served without JAX."""
  result = subprocess.run([sys.executable, '-c', SERVER.replace('main(sys.argv[1:])',
                                                                'import jax')],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert result.returncode != 0 and 'import of jax halted' in result.stderr


# The batcher's NumPy runs out of memory putting together any batch of several images.
SHORT_OF_MEMORY = SERVER.replace('from bisenet_jax.serve.__main__ import main', textwrap.dedent('''
    import numpy
    from bisenet_jax.serve import batching

    class ShortOfMemory:
      def __getattr__(self, name):
        return getattr(numpy, name)

      def concatenate(self, arrays, *args, **kwargs):
        if sum(len(array) for array in arrays) > 1:
          raise MemoryError()
        return numpy.concatenate(arrays, *args, **kwargs)

    batching.np = ShortOfMemory()
    from bisenet_jax.serve.__main__ import main'''))


def test_a_batch_out_of_memory_is_a_500_and_the_server_goes_on(red_model):
  failing = Server(red_model, preamble=SHORT_OF_MEMORY)
  try:
    response = failing.post(*image_request([2, 8, 8, 3]))
    assert response.status_code == 500 and '\n' not in response.json()['error']
    labels = http_infer(failing.http, scenes(1, (8, 8), seed=5)).as_numpy('labels')
    assert labels.shape == (1, 8, 8)
    assert failing.http.is_server_ready()
  finally:
    failing.stop()


def test_overload_is_refused_at_once_and_every_request_answered(red_model, tmp_path):
  gate = Gate(tmp_path / 'gate')
  busy = Server(red_model, '--max-queue', '2', '--max-batch-size', '1', gate=gate)
  post = lambda: busy.post(*image_request([1, 8, 8, 3])).status_code
  try:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      accepted = [pool.submit(post)]
      wait_until(lambda: gate.entered() == 1, 'running')
      accepted += [pool.submit(post) for _ in range(2)]
      wait_until(lambda: busy.queued_images() == 2, 'queued')
      # Refused while the three accepted ones wait: at once.
      assert [post() for _ in range(17)] == [503] * 17
      gate.open()
      assert [request.result() for request in accepted] == [200] * 3
    assert http_infer(busy.http, scenes(1, (8, 8), seed=4)).as_numpy('labels').shape == (1, 8, 8)
  finally:
    busy.stop()


def refuses_connections(port) -> bool:
  try:
    socket.create_connection(('127.0.0.1', port), timeout=2).close()
    return False
  except ConnectionRefusedError:
    return True


def test_sigterm_answers_the_requests_in_flight_then_exits_0(red_model, tmp_path):
  gate = Gate(tmp_path / 'gate')
  stopping = Server(red_model, '--max-batch-size', '1', gate=gate)
  try:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      answers = [pool.submit(lambda: stopping.post(*image_request([1, 8, 8, 3])).status_code)
                 for _ in range(6)]
      wait_until(lambda: gate.entered() == 1 and stopping.queued_images() == 5, 'accepted')
      stopping.process.send_signal(signal.SIGTERM)
      wait_until(lambda: refuses_connections(stopping.port), 'stopping')
      gate.open()  # The six are answered while the server stops.
      assert stopping.process.wait(10) == 0
      assert [answer.result() for answer in answers] == [200] * 6
  finally:
    stopping.stop()


def test_bad_flags_are_one_line_errors(red_model):
  for flags, message in ((['--max-batch-size', '0'], '--max-batch-size'),
                         (['--warmup', '12'], '--warmup'),
                         (['--port', '99999'], '--port')):
    result = subprocess.run([sys.executable, '-m', 'bisenet_jax.serve', '--checkpoint',
                             str(red_model), *flags], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and message in result.stderr
    assert result.stderr.count('\n') == 1


# ---------------------------------------------------------------------------------------------
# A real network on JAX.


@pytest.mark.slow
def test_a_jax_checkpoint_gives_segmenters_labels_in_padded_batches(tmp_path):
  """The reference R18 with random weights (varied labels) on JAX, batches padded to powers of
  two: every request's labels equal ``Segmenter``'s for its images alone, whatever shared its
  forward pass."""
  from bisenet_jax.data.synthetic import draw_street_scene
  from test_export import save_reference_model
  checkpoint = save_reference_model(tmp_path / 'r18', 'bisenetv1_r18')
  jax_server = Server(checkpoint, '--max-batch-size', '4', '--max-batch-delay-ms', '50',
                      '--warmup', '64x128,48x96', preamble=FULL_BATCHES, timeout=900)
  try:
    assert 'JAX on CPU' in jax_server.ready_line
    rng = np.random.default_rng(0)
    requests = [np.stack([draw_street_scene(rng, *SIZES[i % 2])[0]]) for i in range(12)]
    pending = []
    for images in requests:
      pending.append(jax_server.http.async_infer(MODEL, [image_tensor(images)]))
    answers = [request.get_result() for request in pending]
    local = Segmenter.load(checkpoint)
    for images, answer in zip(requests, answers):
      want = local(images[0])
      assert len(np.unique(want)) > 2
      np.testing.assert_array_equal(answer.as_numpy('labels'), want[None])
    assert max(a.get_response()['parameters']['batch_size'] for a in answers) > 1
  finally:
    jax_server.stop()


def test_without_kserve_the_command_names_the_extra(red_model, monkeypatch, capsys):
  import builtins
  real_import = builtins.__import__

  def without_kserve(name, *args, **kwargs):
    if name.split('.')[0] == 'kserve':
      raise ImportError(f'No module named {name!r}', name='kserve')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', without_kserve)
  for module in [name for name in sys.modules if name == 'bisenet_jax.serve.listeners']:
    monkeypatch.delitem(sys.modules, module)
  from bisenet_jax.serve.__main__ import main
  with pytest.raises(SystemExit) as exit_info:
    main(['--checkpoint', str(red_model)])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.strip() == (
      "error: serving needs the serve extra (kserve is missing): pip install -e '.[serve]'")


NODELAY_PROBE = textwrap.dedent("""
    import asyncio, socket, sys
    from bisenet_jax.serve.listeners import listening_socket

    async def nodelay_of_an_accepted_connection():
      loop = asyncio.get_running_loop()
      accepted = loop.create_future()

      class Probe(asyncio.Protocol):
        def connection_made(self, transport):
          accepted.set_result(transport.get_extra_info('socket'))

      listener = listening_socket('127.0.0.1', int(sys.argv[1]))
      server = await loop.create_server(Probe, sock=listener)
      _, writer = await asyncio.open_connection(*listener.getsockname())
      connection = await accepted
      writer.close()
      server.close()
      return connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    print(asyncio.run(nodelay_of_an_accepted_connection()))
""")


def test_answers_are_not_held_back_by_nagles_algorithm():
  """asyncio turns TCP_NODELAY on for the listener's connections (without it a small answer's
  body waits ~40 ms for the client's delayed acknowledgement of its headers). In a process of
  its own: kserve's and tritonclient.grpc's protocol buffers cannot share one."""
  probe = subprocess.run([sys.executable, '-c', NODELAY_PROBE, str(free_port())],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
  assert probe.returncode == 0, probe.stderr
  assert probe.stdout.strip() != '0'
