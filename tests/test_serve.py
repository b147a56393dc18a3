"""Tests of ``python -m bisenet_jax.serve``: the batcher with a fake model, then the server as a
subprocess talked to with real Open Inference Protocol clients (tritonclient HTTP and gRPC).

The quick tier serves a stand-in ``.onnx`` whose labels are each pixel's red value // 14
(tests/test_evaluate.py), in a process where JAX cannot be imported. Where a test needs
requests to wait, the server's forward pass is slowed down in that process. The slow tier
serves a random Fast-SCNN checkpoint on JAX (padded batches).
"""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bisenet_jax.data.masks import encode_index_png
from bisenet_jax.segmenter import Segmenter
from bisenet_jax.serve.batching import (Batcher, QueueFull, batch_sizes, fastest_batch,
                                         padded_size)

from conftest import ROOT, free_port
from test_evaluate import write_red_channel_model

MODEL = 'bisenet'
SIZES = ((64, 128), (48, 96))

# ---------------------------------------------------------------------------------------------
# The batcher, with a fake model that records the batches it runs.


class FakeModel:
  """labels = red channel; records each batch's shape; optionally slow."""

  def __init__(self, seconds=0.0):
    self.shapes, self.seconds = [], seconds

  def __call__(self, images):
    self.shapes.append(images.shape)
    time.sleep(self.seconds)
    return images[..., 0].copy()


def images_of(count, size, value):
  return np.full((count, *size, 3), value, np.uint8)


def test_padded_sizes_are_powers_of_two_up_to_the_maximum():
  assert [padded_size(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
  assert batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(6) == [1, 2, 4, 6]
  assert batch_sizes(1) == [1]


def test_requests_of_one_size_share_a_batch_and_sizes_never_mix():
  model = FakeModel()
  batcher = Batcher(model, max_batch_size=8, max_delay=0.2, max_queue=64)
  futures = [batcher.submit(images_of(n, SIZES[i % 2], i)) for i, n in enumerate((1, 2, 3, 2))]
  results = [future.result(5) for future in futures]
  batcher.close()
  # One batch per size, each waiting for its delay: 1 + 3 images of one size, 2 + 2 of the other.
  assert sorted(model.shapes) == sorted([(4, *SIZES[0], 3), (4, *SIZES[1], 3)])
  for i, (result, n) in enumerate(zip(results, (1, 2, 3, 2))):
    assert result.labels.shape == (n, *SIZES[i % 2]) and (result.labels == i).all()
    assert result.batch_size == 4


def test_a_full_batch_goes_at_once_and_never_exceeds_the_maximum():
  model = FakeModel()
  batcher = Batcher(model, max_batch_size=4, max_delay=10.0, max_queue=64)
  start = time.monotonic()
  futures = [batcher.submit(images_of(n, SIZES[0], n)) for n in (3, 1, 2, 2)]
  for future in futures:
    future.result(5)
  assert time.monotonic() - start < 5  # Full batches did not wait for the 10 s delay.
  assert [shape[0] for shape in model.shapes][:2] == [4, 4]
  batcher.close()


def test_the_oldest_request_goes_first_and_its_delay_bounds_the_wait():
  """Requests of another size wait their turn; the oldest request's size runs first."""
  model = FakeModel(seconds=0.05)
  batcher = Batcher(model, max_batch_size=8, max_delay=0.05, max_queue=64)
  order = []
  futures = []
  for i in range(6):
    future = batcher.submit(images_of(1, SIZES[i % 2], i))
    future.add_done_callback(lambda _, i=i: order.append(i))
    futures.append(future)
  start = time.monotonic()
  for future in futures:
    future.result(5)
  assert time.monotonic() - start < 1
  assert order[0] == 0 and set(order[:3]) == {0, 2, 4}  # Size of request 0 first, all of it.
  batcher.close()


def test_a_full_queue_refuses_at_once_and_every_request_is_accounted_for():
  model = FakeModel(seconds=0.1)
  batcher = Batcher(model, max_batch_size=1, max_delay=0.0, max_queue=2)
  answered = refused = 0
  futures = []
  for i in range(10):
    try:
      futures.append(batcher.submit(images_of(1, SIZES[0], i)))
    except QueueFull:
      refused += 1
  for future in futures:
    future.result(5)
    answered += 1
  batcher.close()
  # Two wait, one may already run: the rest are refused.
  assert answered + refused == 10 and 2 <= answered <= 3


def test_padding_repeats_the_last_image_and_drops_its_results():
  model = FakeModel()
  batcher = Batcher(model, max_batch_size=8, max_delay=0.0, max_queue=64, pad=True)
  result = batcher.submit(np.stack([images_of(1, SIZES[0], v)[0] for v in (5, 6, 7)])).result(5)
  batcher.close()
  assert model.shapes == [(4, *SIZES[0], 3)]
  assert result.labels.shape == (3, *SIZES[0]) and result.batch_size == 3
  assert [int(result.labels[i, 0, 0]) for i in range(3)] == [5, 6, 7]


def test_the_batch_limit_pools_fewer_images_but_a_bigger_request_runs_whole():
  model = FakeModel()
  batcher = Batcher(model, max_batch_size=8, max_delay=0.2, max_queue=64, batch_limit=2)
  futures = [batcher.submit(images_of(n, SIZES[0], n)) for n in (1, 1, 1, 4)]
  for future in futures:
    future.result(5)
  batcher.close()
  assert [shape[0] for shape in model.shapes] == [2, 1, 4]


def test_the_fastest_batch_is_the_one_of_most_images_per_second():
  """A model whose batches of 2 cost little more than 1, and of 4 much more: 2 is fastest."""
  cost = {1: 0.02, 2: 0.022, 4: 0.2}
  model = lambda images: time.sleep(cost[len(images)]) or images[..., 0]
  rows, rates = fastest_batch(model, [SIZES[0]], max_batch_size=4, repeats=1)
  assert rows == 2 and list(rates) == [1, 2, 4]
  assert rates[2] > rates[1] > rates[4]
  # Within 2 % of the best, the smaller batch wins (less waiting for others).
  cost.update({1: 0.02, 2: 0.0401})
  assert fastest_batch(model, [SIZES[0]], max_batch_size=4, repeats=1)[0] == 1


def test_close_answers_every_waiting_request_then_refuses():
  model = FakeModel(seconds=0.05)
  batcher = Batcher(model, max_batch_size=1, max_delay=0.0, max_queue=64)
  futures = [batcher.submit(images_of(1, SIZES[0], i)) for i in range(5)]
  batcher.close()
  assert all(future.done() and not future.exception() for future in futures)
  with pytest.raises(Exception, match='shutting down'):
    batcher.submit(images_of(1, SIZES[0], 0))


# ---------------------------------------------------------------------------------------------
# The server, as a subprocess.

# JAX cannot be imported in the server's process: serving an exported file must not need it.
# SLOW_BATCHES > 0 makes each forward pass take that many more seconds.
SERVER = textwrap.dedent('''
    import os, sys, time
    for name in ('jax', 'jaxlib', 'flax', 'orbax', 'orbax.checkpoint'):
      sys.modules[name] = None
    delay = float(os.environ.get('SLOW_BATCHES', '0'))
    if delay:
      from bisenet_jax import segmenter
      labels = segmenter.OnnxBackend.labels
      segmenter.OnnxBackend.labels = lambda self, images: (time.sleep(delay),
                                                           labels(self, images))[1]
    from bisenet_jax.serve.__main__ import main
    main(sys.argv[1:])
''')


class Server:
  """A running server: its process, addresses and clients."""

  def __init__(self, checkpoint, *flags, slow=0.0, preamble=SERVER, timeout=120):
    self.port, self.grpc_port = free_port(), free_port()
    self.url, self.grpc_url = f'127.0.0.1:{self.port}', f'127.0.0.1:{self.grpc_port}'
    command = [sys.executable, '-c', preamble] if preamble else [sys.executable, '-m',
                                                                 'bisenet_jax.serve']
    self.process = subprocess.Popen(
        [*command, '--checkpoint', str(checkpoint), '--port', str(self.port),
         '--grpc-port', str(self.grpc_port), *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, 'SLOW_BATCHES': str(slow)})
    self.ready_line = self._wait_ready(timeout)
    self.http = httpclient.InferenceServerClient(self.url, concurrency=16)
    self.grpc = grpcclient.InferenceServerClient(self.grpc_url)

  def _wait_ready(self, timeout):
    found = []
    reader = threading.Thread(target=lambda: found.append(self.process.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not found or not found[0].startswith('serving'):
      self.process.kill()
      raise AssertionError(f'no ready line: {found} {self.process.stderr.read()}')
    return found[0].strip()

  def post(self, body, headers=None):
    return httpx.post(f'http://{self.url}/v2/models/{MODEL}/infer', content=body,
                      headers=headers or {}, timeout=30)

  def stop(self):
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait(10)
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


def test_concurrent_requests_of_two_sizes_each_get_their_own_labels(server, segmenter):
  requests = [scenes(1 + i % 2, SIZES[i % 2], seed=10 + i) for i in range(16)]
  pending = []
  for images in requests:  # 16 requests in flight at once (the client's 16 connections).
    pending.append(server.http.async_infer(MODEL, [image_tensor(images)]))
  answers = [request.get_result() for request in pending]
  for images, answer in zip(requests, answers):
    np.testing.assert_array_equal(answer.as_numpy('labels'), segmenter.batch(images))
  batches = [answer.get_response()['parameters']['batch_size'] for answer in answers]
  assert max(batches) > 2 and max(batches) <= 4  # Requests did share forward passes.


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


def test_overload_is_refused_at_once_and_every_request_answered(red_model):
  busy = Server(red_model, '--max-queue', '2', '--max-batch-size', '1', slow=0.1)
  try:
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
      statuses = list(pool.map(
          lambda _: busy.post(*image_request([1, 8, 8, 3])).status_code, range(20)))
    assert statuses.count(200) + statuses.count(503) == 20
    assert statuses.count(503) >= 5 and statuses.count(200) >= 3
    assert http_infer(busy.http, scenes(1, (8, 8), seed=4)).as_numpy('labels').shape == (1, 8, 8)
  finally:
    busy.stop()


def test_sigterm_answers_the_requests_in_flight_then_exits_0(red_model):
  stopping = Server(red_model, '--max-batch-size', '1', slow=0.3)
  try:
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      answers = [pool.submit(lambda: stopping.post(*image_request([1, 8, 8, 3])).status_code)
                 for _ in range(6)]
      time.sleep(0.5)  # All six are accepted; one or two answered.
      start = time.monotonic()
      stopping.process.send_signal(signal.SIGTERM)
      assert stopping.process.wait(10) == 0
      assert time.monotonic() - start < 10
      assert [answer.result() for answer in answers] == [200] * 6
    with pytest.raises(ConnectionRefusedError), socket.create_connection(
        ('127.0.0.1', stopping.port), timeout=2):
      pass
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
                      '--warmup', '64x128,48x96', preamble=None, timeout=900)
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
