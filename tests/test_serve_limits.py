"""The server under attack: each bound (docs/serving.md, "Limits and faults") met by a client
that crosses it, and each fault (a slow client, a big JSON answer, a full queue, a client that
leaves, a worker that stops, the repository routes) answered as documented, in one line and with
no traceback in the server's log.
"""

import concurrent.futures
import threading
import time

import cv2
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from serve_support import LoggedServer, binary_body, serialized, tensor_header
from test_evaluate import write_red_channel_model
from test_serve import MODEL


@pytest.fixture(scope='module')
def red_model(tmp_path_factory):
  return write_red_channel_model(tmp_path_factory.mktemp('limits') / 'red.onnx')


@pytest.fixture
def log(tmp_path):
  return tmp_path / 'server.log'


def zero_pngs(count, size):
  png = cv2.imencode('.png', np.zeros((*size, 3), np.uint8))[1].tobytes()
  return binary_body({'inputs': [tensor_header('image_bytes', 'BYTES', [count],
                                               binary_data_size=count * (len(png) + 4))],
                      'outputs': [{'name': 'labels', 'parameters': {'binary_data': False}}]},
                     serialized(*[png] * count))


def test_health_answers_while_big_json_answers_are_written(red_model, log):
  """Three requests of two 1000x1000 all-zero PNGs (9 KB each) asking their 2 million labels as
  JSON (8 MB each): health probes, REST and gRPC, go on answering meanwhile. The JSON was
  written on the event loop, as Python lists: every probe waited for it (seconds)."""
  server = LoggedServer(red_model, log)
  try:
    body, headers = zero_pngs(2, (1000, 1000))
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      start = time.monotonic()
      big = [pool.submit(server.post, body, headers, timeout=120) for _ in range(3)]
      probes = []
      while not all(request.done() for request in big):
        sent = time.monotonic()
        assert server.get('/v2/health/ready').status_code == 200
        assert server.grpc.is_server_ready()
        probes.append(time.monotonic() - sent)
        time.sleep(0.02)
      big_s = time.monotonic() - start
    for request in big:
      response = request.result()
      assert response.status_code == 200, response.text
      assert len(response.json()['outputs'][0]['data']) == 2_000_000
    assert len(probes) >= 3, (probes, big_s)
    assert max(probes) < 1.0, (max(probes), big_s)
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()
