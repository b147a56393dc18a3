"""The server under attack: each bound (docs/serving.md, "Limits and faults") met by a client
that crosses it, and each fault (a slow client, a big JSON answer, a full queue, a client that
leaves, a worker that stops, the repository routes) answered as documented, in one line and with
no traceback in the server's log.
"""

import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT
from serve_support import LoggedServer, binary_body, serialized, tensor_header, wait_until
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


# ---------------------------------------------------------------------------------------------
# Slow clients: headers and bodies that trickle, answers nobody takes, idle and surplus
# connections.

HEADERS = b'POST /v2/models/bisenet/infer HTTP/1.1\r\nHost: x\r\n'


def trickle(sockets, byte=b'x', header=True):
  """One more byte on each open socket (a header line's, or the body's)."""
  for sock in sockets:
    try:
      sock.sendall(b'X-Slow: ' + byte + b'\r\n' if header else byte)
    except OSError:
      pass


def answer_of(sock, timeout=5.0) -> bytes:
  """What the server sent before it closed, or b'' if it keeps the socket open."""
  sock.settimeout(timeout)
  data = b''
  try:
    while chunk := sock.recv(65536):
      data += chunk
  except (TimeoutError, ConnectionResetError):
    return data if data else b'(open)' if not data else data
  return data


def slow_sockets(server, count, phase):
  sockets = [server.connect() for _ in range(count)]
  for sock in sockets:
    sock.sendall(HEADERS if phase == 'headers' else HEADERS + b'Content-Length: 1000\r\n\r\n')
  return sockets


def one_line_refusal(answer: bytes, code: int, words: str) -> bool:
  head, _, body = answer.partition(b'\r\n\r\n')
  error = json.loads(body)['error'] if body else ''
  return head.startswith(b'HTTP/1.1 %d ' % code) and words in error and '\n' not in error


@pytest.mark.parametrize('phase', ['headers', 'body'])
def test_sockets_that_trickle_a_request_are_answered_408_and_closed(red_model, log, phase):
  """20 sockets send their headers (or, headers done, a body of 1000 bytes) a byte at a time:
  each is answered 408 and closed once --header-timeout-s (--body-timeout-s) is over, and the
  server's open files are back where they were. Meanwhile a client is served."""
  server = LoggedServer(red_model, log, '--header-timeout-s', '1', '--body-timeout-s', '1')
  try:
    before = server.open_fds()
    sockets = slow_sockets(server, 20, phase)
    for _ in range(6):  # 1.2 s of trickling.
      trickle(sockets, header=phase == 'headers')
      time.sleep(0.2)
      assert server.get('/v2/health/ready').status_code == 200
    flag = '--header-timeout-s' if phase == 'headers' else '--body-timeout-s'
    for sock in sockets:
      answer = answer_of(sock)
      assert one_line_refusal(answer, 408, flag), answer[:300]
      sock.close()
    assert wait_until(lambda: server.open_fds() <= before, 5), (server.open_fds(), before)
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


@pytest.mark.parametrize('phase', ['headers', 'body'])
def test_slow_sockets_beyond_max_connections_make_room_for_new_ones(red_model, log, phase):
  """30 slow sockets against --max-connections 8: each new connection closes the one waiting
  longest for its headers (503), or for a body arriving slowly for a second, so a client that
  sends its request at once is served throughout, and the server holds at most 8
  connections."""
  server = LoggedServer(red_model, log, '--max-connections', '8')
  try:
    before = server.open_fds()
    sockets = slow_sockets(server, 30, phase)
    time.sleep(1.1)  # Slow bodies make room once they have been arriving for a second.
    for _ in range(5):
      trickle(sockets, header=phase == 'headers')
      assert server.get('/v2/health/ready').status_code == 200
      time.sleep(0.1)
    # Refused connections linger 2 s, reading what their clients still send, then close.
    assert wait_until(lambda: server.open_fds() <= before + 8, 5), server.open_fds()
    answers = [answer_of(sock, timeout=0.5) for sock in sockets]
    closed = [answer for answer in answers if answer != b'(open)']
    assert len(closed) >= 22
    for answer in closed:
      # Closed while its body was read: no answer (the routes see the client leave).
      assert one_line_refusal(answer, 503, '--max-connections 8') or (
          phase == 'body' and answer == b''), answer[:300]
    for sock in sockets:
      sock.close()
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


def test_a_connection_beyond_max_connections_of_busy_ones_is_503(red_model, log):
  """Every connection busy with a request that arrived whole (its forward pass slowed down):
  a new one is answered 503 at once."""
  server = LoggedServer(red_model, log, '--max-connections', '2', '--max-batch-size', '1',
                        slow=1.0)
  try:
    body, headers = zero_pngs(1, (4, 4))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      busy = [pool.submit(server.post, body, headers) for _ in range(2)]
      time.sleep(0.5)
      sock = server.connect()
      answer = answer_of(sock)
      assert one_line_refusal(answer, 503, '--max-connections 2 connections busy'), answer
      # A client sending 3 MB reads the refusal, not a reset: the refused connection lingers.
      big, big_headers = image_request(size=(1000, 1000))
      response = server.post(big, big_headers)
      assert response.status_code == 503 and 'busy' in response.json()['error']
      assert [request.result().status_code for request in busy] == [200, 200]
    assert server.get('/v2/health/ready').status_code == 200
  finally:
    server.stop()


def test_headers_over_max_header_bytes_are_431(red_model, log):
  server = LoggedServer(red_model, log, '--max-header-bytes', '4096')
  try:
    sock = server.connect()
    sock.sendall(HEADERS + b'X-Big: ' + b'y' * 8000 + b'\r\n')
    assert one_line_refusal(answer_of(sock), 431, '--max-header-bytes 4096')
    assert server.get('/v2/health/ready').status_code == 200
  finally:
    server.stop()


def test_an_idle_kept_alive_connection_is_closed_after_keep_alive_s(red_model, log):
  server = LoggedServer(red_model, log, '--keep-alive-s', '0.5')
  try:
    sock = server.connect()
    sock.sendall(b'GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n')
    start = time.monotonic()
    answer = answer_of(sock)
    assert answer.startswith(b'HTTP/1.1 200 ') and time.monotonic() - start < 3
  finally:
    server.stop()


def test_an_answer_nobody_takes_closes_its_connection_after_body_timeout_s(red_model, log):
  """A client asks for 8 MB of labels and reads none of them (a small receive buffer): the
  server drops the answer and the connection once it has waited --body-timeout-s."""
  server = LoggedServer(red_model, log, '--body-timeout-s', '1')
  try:
    before = server.open_fds()
    image = np.zeros((8, 1000, 1000, 3), np.uint8)
    body, headers = binary_body({'inputs': [tensor_header(shape=image.shape,
                                                          binary_data_size=image.size)],
                                 'parameters': {'binary_data_output': True}}, image.tobytes())
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(('127.0.0.1', server.port))
    sock.sendall(b'POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n'
                 b'Inference-Header-Content-Length: %s\r\n\r\n' % (
                     MODEL.encode(), len(body),
                     headers['inference-header-content-length'].encode()) + body)
    assert wait_until(lambda: server.open_fds() > before, 5)
    time.sleep(0.5)  # The answer is written, the client reads nothing.
    assert wait_until(lambda: server.open_fds() <= before, 10), (server.open_fds(), before)
    sock.close()
    assert server.get('/v2/health/ready').status_code == 200
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


def test_json_bodies_and_answers_over_max_json_bytes(red_model, log):
  """A JSON body over --max-json-bytes is a 413 by its Content-Length, before it is read; labels
  asked as JSON that could be over it are a 400 before any work; both say to send binary."""
  server = LoggedServer(red_model, log, '--max-json-bytes', '100000')
  try:
    response = server.post(json.dumps({'inputs': [{'name': 'image', 'datatype': 'UINT8',
                                                   'shape': [1, 200, 100, 3],
                                                   'data': [0] * 60000}]}))
    assert response.status_code == 413 and 'send the images as binary data' in (
        response.json()['error'])
    body, headers = zero_pngs(1, (200, 200))
    response = server.post(body, headers)
    assert response.status_code == 400, response.text
    assert "'labels' as JSON would be 40000 numbers" in response.json()['error']
    assert 'binary_data' in response.json()['error']
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


def test_grpc_calls_beyond_grpc_max_rpcs_are_resource_exhausted(red_model, log):
  server = LoggedServer(red_model, log, '--grpc-max-rpcs', '2', '--max-batch-size', '1',
                        slow=0.5)
  try:
    image = np.zeros((1, 4, 4, 3), np.uint8)

    def call(_):
      client = grpcclient.InferenceServerClient(server.grpc_url)
      tensor = grpcclient.InferInput('image', list(image.shape), 'UINT8')
      tensor.set_data_from_numpy(image)
      try:
        client.infer(MODEL, [tensor])
        return 'ok'
      except InferenceServerException as error:
        return error.status()
      finally:
        client.close()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
      outcomes = list(pool.map(call, range(6)))
    assert outcomes.count('ok') >= 2 and 'StatusCode.RESOURCE_EXHAUSTED' in outcomes, outcomes
    assert set(outcomes) <= {'ok', 'StatusCode.RESOURCE_EXHAUSTED'}
    assert server.grpc.is_server_ready()
  finally:
    server.stop()


# ---------------------------------------------------------------------------------------------
# Admission, deadlines, clients that leave, a worker that stops.


def image_request(count=1, size=(4, 4), value=0):
  image = np.full((count, *size, 3), value, np.uint8)
  return binary_body({'inputs': [tensor_header(shape=image.shape, binary_data_size=image.size)],
                      'parameters': {'binary_data_output': True}}, image.tobytes())


def test_a_request_that_can_never_fit_the_queue_is_400_not_503(red_model, log):
  """3 images against --max-queue 2: no wait would help, so not 'busy' (503) but a one-line
  400 naming the flag."""
  server = LoggedServer(red_model, log, '--max-queue', '2', '--max-batch-size', '4')
  try:
    response = server.post(*image_request(count=3))
    assert response.status_code == 400, response.text
    assert "--max-queue 2" in response.json()['error']
    assert server.post(*image_request(count=2)).status_code == 200
  finally:
    server.stop()


def test_a_full_queue_refuses_before_reading_or_decoding(red_model, log):
  """With the queue full, a request is a 503 before its body is read (its headers promise
  10 MB that never come) and before its files are decoded (garbage files: not a 400)."""
  server = LoggedServer(red_model, log, '--max-queue', '1', '--max-batch-size', '1', slow=1.5)
  try:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
      running = pool.submit(server.post, *image_request())
      time.sleep(0.3)
      waiting = pool.submit(server.post, *image_request())
      time.sleep(0.3)  # One image runs, one waits: the queue is full.
      sock = server.connect()
      sock.sendall(b'POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\n'
                   b'Content-Length: 10000000\r\n\r\n' % MODEL.encode())
      assert one_line_refusal(answer_of(sock, timeout=0.3), 503, 'the server is busy')
      sock.close()
      garbage, headers = binary_body(
          {'inputs': [tensor_header('image_bytes', 'BYTES', [1], binary_data_size=8)]},
          serialized(b'junk'))
      response = server.post(garbage, headers)
      assert response.status_code == 503 and 'busy' in response.json()['error']
      assert running.result().status_code == 200 and waiting.result().status_code == 200
  finally:
    server.stop()


def test_a_client_that_leaves_withdraws_its_request(red_model, log):
  """One request runs (1 s), a second waits; its client disconnects: it is never run (one
  forward pass in all), it is counted as client_left, and the next request is served."""
  server = LoggedServer(red_model, log, '--max-batch-size', '1', slow=1.0)
  try:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      running = pool.submit(server.post, *image_request(value=1))
      time.sleep(0.3)
      body, headers = image_request(value=2)
      sock = server.connect()
      sock.sendall(b'POST /v2/models/%s/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n'
                   b'Inference-Header-Content-Length: %s\r\n\r\n' % (
                       MODEL.encode(), len(body),
                       headers['inference-header-content-length'].encode()) + body)
      time.sleep(0.3)
      sock.close()
      assert running.result().status_code == 200
    time.sleep(1.5)  # Had it stayed queued, it would have run by now.
    assert server.metric('bisenet_batch_images_count') == 1
    assert server.metric('bisenet_requests_total{outcome="client_left",protocol="rest"}') == 1
    assert server.post(*image_request()).status_code == 200
    assert server.metric('bisenet_batch_images_count') == 2
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


def test_a_grpc_call_cancelled_by_its_client_is_withdrawn(red_model, log):
  server = LoggedServer(red_model, log, '--max-batch-size', '1', slow=1.0)
  try:
    image = np.zeros((1, 4, 4, 3), np.uint8)
    tensor = grpcclient.InferInput('image', list(image.shape), 'UINT8')
    tensor.set_data_from_numpy(image)
    done = []
    server.grpc.async_infer(MODEL, [tensor], callback=lambda result, error: done.append(error))
    time.sleep(0.3)
    second = server.grpc.async_infer(MODEL, [tensor], callback=lambda *_: None)
    time.sleep(0.3)
    second.cancel()
    assert wait_until(lambda: done == [None], 10)
    time.sleep(1.5)  # Had it stayed queued, it would have run by now.
    assert server.metric('bisenet_batch_images_count') == 1
    assert server.metric('bisenet_requests_total{outcome="client_left",protocol="grpc"}') == 1
  finally:
    server.stop()


def test_a_request_still_waiting_at_its_deadline_is_504(red_model, log):
  """--request-timeout-s 0.5 with each forward pass taking 1 s: of three requests at once the
  first runs, the others are withdrawn at their deadline (504 / DEADLINE_EXCEEDED) and never
  run. A gRPC client's own shorter deadline is kept too."""
  server = LoggedServer(red_model, log, '--max-batch-size', '1', '--request-timeout-s', '0.5',
                        slow=1.0)
  try:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      answers = [pool.submit(server.post, *image_request()) for _ in range(3)]
      statuses = sorted(answer.result().status_code for answer in answers)
    assert statuses == [200, 504, 504], statuses
    error = [a.result() for a in answers if a.result().status_code == 504][0].json()['error']
    assert 'past its deadline' in error and '\n' not in error
    time.sleep(1.0)
    assert server.metric('bisenet_batch_images_count') == 1
    assert server.metric('bisenet_requests_total{outcome="deadline",protocol="rest"}') == 2
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


DYING_SERVER = '''
import sys
for name in ('jax', 'jaxlib', 'flax', 'orbax', 'orbax.checkpoint'):
  sys.modules[name] = None
from bisenet_jax import segmenter
labels = segmenter.OnnxBackend.labels

def dying(self, images, *args):
  if images[0, 0, 0, 0] == 255:
    raise SystemExit  # The worker thread ends (an uncaught BaseException, silently).
  return labels(self, images, *args)

segmenter.OnnxBackend.labels = dying
from bisenet_jax.serve.__main__ import main
main(sys.argv[1:])
'''


def test_a_stopped_worker_makes_the_server_unready_and_refuses_at_once(red_model, log):
  server = LoggedServer(red_model, log, '--request-timeout-s', '1', preamble=DYING_SERVER)
  try:
    assert server.get('/v2/health/ready').status_code == 200
    response = server.post(*image_request(value=255))  # Its forward pass ends the worker.
    assert response.status_code == 503 and 'stopped running its model' in response.json()['error']
    assert server.get('/v2/health/ready').status_code == 503
    assert server.get(f'/v2/models/{MODEL}/ready').status_code == 503
    assert not server.grpc.is_server_ready()
    start = time.monotonic()
    response = server.post(*image_request())
    assert response.status_code == 503 and 'stopped' in response.json()['error']
    assert time.monotonic() - start < 0.5
    assert server.get('/v2/health/live').status_code == 200
    assert 'Traceback' not in server.log_text()
  finally:
    server.stop()


def test_the_attack_script_reports_each_attack(red_model, log):
  """``python -m bisenet_jax.bench.serve_attack`` against a server, a few small attacks: one
  row each, the client's latency, the server's open files, no tracebacks."""
  server = LoggedServer(red_model, log)
  try:
    result = subprocess.run(
        [sys.executable, '-m', 'bisenet_jax.bench.serve_attack', '--url', server.base,
         '--grpc-port', str(server.grpc_port), '--server-log', str(log), '--seconds', '2',
         '--sockets', '5', '--attacks', 'slow-headers,malformed,binary-outputs,repository'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
    assert [row['attack'] for row in rows] == ['slow-headers', 'malformed', 'binary-outputs',
                                               'repository']
    outcomes = {row['attack']: row['outcome'] for row in rows}
    assert outcomes['slow-headers'] == '5 sockets after 2 s: still open x5'
    # Within 2 s: what was sent was refused.
    sent = r'REST (not sent \(time limit\) x\d+, )?400 x\d+; gRPC INVALID_ARGUMENT x20'
    assert re.fullmatch(sent, outcomes['malformed']), outcomes['malformed']
    assert outcomes['binary-outputs'] == 'labels: 200 binary x30, mask_png: 200 binary x30'
    assert outcomes['repository'] == 'REST 501 x90; gRPC UNIMPLEMENTED x20'
    assert all(row['tracebacks'] == 0 and row['fds'] != '0 / 0 / 0' for row in rows)
    assert '| attack |' in result.stdout
  finally:
    server.stop()
