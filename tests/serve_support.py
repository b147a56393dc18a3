"""What the server's tests share beyond tests/test_serve.py: a server whose log is a file (so a
test can show that nothing it sent left a traceback there), raw HTTP and gRPC requests, and
binary-extension bodies."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from conftest import ROOT, free_port
from test_serve import MODEL, SERVER


class LoggedServer:
  """``python -m bisenet_jax.serve`` (JAX unimportable, as tests/test_serve.py's) with its stderr
  in ``log``: ``log_text()`` is everything it wrote."""

  def __init__(self, checkpoint, log, *flags, slow=0.0, env=None, timeout=120, preamble=SERVER):
    self.port, self.grpc_port = free_port(), free_port()
    self.url, self.grpc_url = f'127.0.0.1:{self.port}', f'127.0.0.1:{self.grpc_port}'
    self.base = f'http://{self.url}'
    self.log = log
    with open(log, 'w') as stderr:
      self.process = subprocess.Popen(
          [sys.executable, '-c', preamble, '--checkpoint', str(checkpoint), '--port',
           str(self.port), '--grpc-port', str(self.grpc_port), *flags],
          cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True,
          env={**os.environ, 'SLOW_BATCHES': str(slow), **(env or {})})
    found = []
    reader = threading.Thread(target=lambda: found.append(self.process.stdout.readline()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not found or not found[0].startswith('serving'):
      self.process.kill()
      raise AssertionError(f'no ready line: {found} {self.log_text()}')
    self.http = httpclient.InferenceServerClient(self.url, concurrency=4)
    self.grpc = grpcclient.InferenceServerClient(self.grpc_url)

  def log_text(self) -> str:
    with open(self.log) as log:
      return log.read()

  def post(self, body, headers=None, path=f'/v2/models/{MODEL}/infer', timeout=30):
    return httpx.post(self.base + path, content=body, headers=headers or {}, timeout=timeout)

  def get(self, path, timeout=30):
    return httpx.get(self.base + path, timeout=timeout)

  def infer_raw(self, request: service_pb2.ModelInferRequest):
    """A ModelInfer call with a hand-made message (tritonclient checks what it builds)."""
    return self.grpc._client_stub.ModelInfer(request, timeout=30)

  def connect(self) -> socket.socket:
    return socket.create_connection(('127.0.0.1', self.port), timeout=30)

  def metric(self, sample: str) -> float:
    """A sample of GET /metrics, named as it is printed, e.g. 'bisenet_batch_images_count' or
    'bisenet_requests_total{outcome="ok",protocol="rest"}'; 0 when absent."""
    for line in self.get('/metrics').text.splitlines():
      name, _, value = line.rpartition(' ')
      if name == sample:
        return float(value)
    return 0.0

  def open_fds(self) -> int:
    return len(os.listdir(f'/proc/{self.process.pid}/fd'))

  def stop(self):
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(15)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(10)
    self.http.close()
    self.grpc.close()


def binary_body(header: dict, *parts: bytes):
  """A binary-extension body and its headers: ``header`` as JSON, then ``parts``."""
  head = json.dumps(header).encode()
  return head + b''.join(parts), {'inference-header-content-length': str(len(head))}


def serialized(*elements: bytes) -> bytes:
  """BYTES elements as the binary extension lays them out: length (4 bytes LE), bytes."""
  return b''.join(len(e).to_bytes(4, 'little') + e for e in elements)


def tensor_header(name='image', datatype='UINT8', shape=(1, 8, 8, 3), **parameters) -> dict:
  return {'name': name, 'datatype': datatype, 'shape': list(shape),
          'parameters': parameters}


def image_body(shape=(1, 8, 8, 3), outputs=None, parameters=None, value=0):
  """A valid binary ``image`` request of zeros (or ``value``)."""
  data = np.full(shape, value, np.uint8).tobytes()
  header = {'inputs': [tensor_header(shape=shape, binary_data_size=len(data))]}
  if outputs is not None:
    header['outputs'] = outputs
  if parameters is not None:
    header['parameters'] = parameters
  return binary_body(header, data)


def grpc_request(name, datatype, shape, raw=None, **contents):
  """A raw ModelInferRequest of one input, its bytes in ``raw`` or listed in ``contents``."""
  request = service_pb2.ModelInferRequest(model_name=MODEL)
  tensor = request.inputs.add()
  tensor.name, tensor.datatype = name, datatype
  tensor.shape.extend(shape)
  for field, values in contents.items():
    getattr(tensor.contents, field).extend(values)
  if raw is not None:
    request.raw_input_contents.append(raw)
  return request


def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return True
    time.sleep(step)
  return predicate()
