"""``python -m bisenet_jax.bench.serve_attack``: attacks on a running server
(``python -m bisenet_jax.serve``) from another process on this machine, each with fixed counts
and a time limit, and what each costs the server and a normal client.

  python -m bisenet_jax.serve --checkpoint runs/fastscnn --warmup 64x64,1024x1024 \\
      2> serve.log &
  python -m bisenet_jax.bench.serve_attack --url http://127.0.0.1:8080 --grpc-port 8081 \\
      --server-log serve.log

The attacks (docs/serving.md, "Limits and faults"):

  slow-headers    --sockets sockets send a request's headers one byte a second
  slow-body       --sockets sockets send whole headers, then a 100 kB body one byte a second
  malformed       200 malformed binary bodies (REST) and 20 truncated BYTES tensors (gRPC)
  binary-outputs  60 requests naming labels or mask_png under "binary_data_output": true
  big-json        8 requests of 8 all-zero 1024x1024 PNGs asking their labels as JSON, 2 at once
  flood           96 requests of one 1024x1024 image (3 MB), 48 at once
  disconnect      32 requests of one 1024x1024 image whose clients leave 0.2 s after sending
  repository      90 repository calls over REST (load, unload, index), 20 over gRPC

Each runs for at most --seconds (the slow ones for exactly that long). Meanwhile a normal client
sends, one after the other, a health probe over REST and over gRPC and a binary inference
request of one 64x64 image, and the server's process is sampled (its resident memory and open
files, sockets among them; Linux /proc). Each attack prints one row: what the attacker saw, the
client's p50/p99 latency (inference, health) and failed requests, the server's memory and open
files before, at most and after, and the tracebacks the attack added to --server-log.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import ipaddress
import json
import os
import socket
import struct
import threading
import time
import urllib.parse

import numpy as np

from bisenet_jax.errors import UserError

ATTACKS = ('slow-headers', 'slow-body', 'malformed', 'binary-outputs', 'big-json', 'flood',
           'disconnect', 'repository')
CLIENT_SIZE = (64, 64)
BIG_SIZE = (1024, 1024)


@dataclasses.dataclass(frozen=True)
class AttackSpec:
  """Where the server is and how hard to attack it.

  Attributes:
    host: the server's loopback address.
    port: its REST port.
    grpc_port: its gRPC port.
    model: the model's name in the protocol paths.
    pid: the server's process id (its memory and open files are read from /proc).
    server_log: the server's stderr, where tracebacks are counted; None: not counted.
    sockets: the slow attacks' sockets.
    seconds: each attack's time limit.
  """
  host: str
  port: int
  grpc_port: int
  model: str = 'bisenet'
  pid: int | None = None
  server_log: str | None = None
  sockets: int = 200
  seconds: float = 30.0

  @property
  def base(self) -> str:
    return f'http://{self.host}:{self.port}'

  @property
  def infer_path(self) -> str:
    return f'/v2/models/{self.model}/infer'


# ---------------------------------------------------------------------------------------------
# The bystanders: a normal client and the server's process, watched during each attack.


class Client(threading.Thread):
  """A normal client: REST health, gRPC health, one small inference, again and again."""

  def __init__(self, spec: AttackSpec):
    super().__init__(daemon=True)
    import httpx
    import tritonclient.grpc as grpcclient
    self.spec, self.stop = spec, threading.Event()
    self.http = httpx.Client(base_url=spec.base, timeout=60)
    self.grpc = grpcclient.InferenceServerClient(f'{spec.host}:{spec.grpc_port}')
    self.body, self.headers = binary_request(
        np.zeros((1, *CLIENT_SIZE, 3), np.uint8), {'binary_data_output': True})
    self.seconds = collections.defaultdict(list)
    self.failures = collections.Counter()

  def run(self):
    while not self.stop.is_set():
      self._timed('health', lambda: self.http.get('/v2/health/ready').status_code)
      self._timed('health', lambda: 200 if self.grpc.is_server_ready() else 503)
      self._timed('infer', lambda: self.http.post(self.spec.infer_path, content=self.body,
                                                  headers=self.headers).status_code)
      self.stop.wait(0.05)

  def _timed(self, kind: str, call):
    start = time.perf_counter()
    try:
      status = call()
    except Exception as error:  # Any failure counts, whatever its kind.
      status = type(error).__name__
    self.seconds[kind].append(time.perf_counter() - start)
    if status != 200:
      self.failures[f'{kind} {status}'] += 1

  def answered(self) -> int:
    """The client's inference requests answered so far (each one image)."""
    return len(self.seconds['infer']) - sum(
        count for what, count in self.failures.items() if what.startswith('infer '))

  def percentiles(self, kind: str) -> str:
    values = self.seconds[kind]
    if not values:
      return 'none'
    p50, p99 = np.percentile(values, [50, 99]) * 1000
    return f'{p50:.0f} / {p99:.0f}'

  def finish(self):
    self.stop.set()
    self.join(120)
    self.http.close()
    self.grpc.close()


class Watcher(threading.Thread):
  """Samples the server process's resident memory and open files every 0.2 s."""

  def __init__(self, pid: int | None):
    super().__init__(daemon=True)
    self.pid, self.stop, self.samples = pid, threading.Event(), []

  def sample(self) -> tuple[float, int, int]:
    """(resident MB, open files, sockets) of the server's process, or zeros without one."""
    if self.pid is None:
      return 0.0, 0, 0
    with open(f'/proc/{self.pid}/status') as status:
      rss = next(int(line.split()[1]) for line in status if line.startswith('VmRSS:')) / 1024
    links = []
    for fd in os.listdir(f'/proc/{self.pid}/fd'):
      try:
        links.append(os.readlink(f'/proc/{self.pid}/fd/{fd}'))
      except OSError:
        pass
    return rss, len(links), sum(link.startswith('socket:') for link in links)

  def run(self):
    while not self.stop.wait(0.2):
      self.samples.append(self.sample())

  def finish(self) -> dict:
    self.stop.set()
    self.join(10)
    return {'max': tuple(max(values) for values in zip(*self.samples)) if self.samples else None}


def traceback_count(spec: AttackSpec) -> int | None:
  if spec.server_log is None:
    return None
  with open(spec.server_log, errors='replace') as log:
    return log.read().count('Traceback')


# ---------------------------------------------------------------------------------------------
# Requests.


def binary_request(images: np.ndarray, parameters: dict | None = None, outputs=None):
  header = {'inputs': [{'name': 'image', 'datatype': 'UINT8', 'shape': list(images.shape),
                        'parameters': {'binary_data_size': images.size}}]}
  if parameters:
    header['parameters'] = parameters
  if outputs:
    header['outputs'] = outputs
  return body_of(header, images.tobytes())


def body_of(header: dict, *parts: bytes):
  head = json.dumps(header).encode()
  return head + b''.join(parts), {'inference-header-content-length': str(len(head)),
                                  'content-type': 'application/octet-stream'}


def raw_request(spec: AttackSpec, body: bytes, headers: dict) -> bytes:
  lines = [f'POST {spec.infer_path} HTTP/1.1', f'Host: {spec.host}',
           f'Content-Length: {len(body)}', *(f'{k}: {v}' for k, v in headers.items())]
  return ('\r\n'.join(lines) + '\r\n\r\n').encode() + body


def malformed_bodies() -> list[tuple[bytes, dict]]:
  """The malformed binary bodies: truncated and oversized BYTES lengths, string and null dims,
  parameters that are a list, a header length past the body, bytes after the last input."""
  bytes_input = lambda size: {'name': 'image_bytes', 'datatype': 'BYTES', 'shape': [1],
                              'parameters': {'binary_data_size': size}}
  image_input = lambda shape: {'name': 'image', 'datatype': 'UINT8', 'shape': shape,
                               'parameters': {'binary_data_size': 192}}
  pixels = bytes(192)
  return [body_of({'inputs': [bytes_input(3)]}, b'\x05\x00\x00'),
          body_of({'inputs': [bytes_input(8)]}, struct.pack('<I', 2**31 - 1) + b'abcd'),
          body_of({'inputs': [image_input(['1', 8, 8, 3])]}, pixels),
          body_of({'inputs': [image_input([None, 8, 8, 3])]}, pixels),
          body_of({'inputs': [image_input([1, 8, 8, 3])], 'parameters': [1]}, pixels),
          (b'{}', {'inference-header-content-length': '99'}),
          body_of({'inputs': [image_input([1, 8, 8, 3])]}, pixels, b'junk'),
          body_of({'inputs': [image_input([-1, 8, 8, 3])]}, pixels)]


def zero_pngs_as_json(count: int, size: tuple[int, int]):
  import cv2
  png = cv2.imencode('.png', np.zeros((*size, 3), np.uint8))[1].tobytes()
  elements = b''.join(len(png).to_bytes(4, 'little') + png for _ in range(count))
  return body_of({'inputs': [{'name': 'image_bytes', 'datatype': 'BYTES', 'shape': [count],
                              'parameters': {'binary_data_size': len(elements)}}],
                  'outputs': [{'name': 'labels', 'parameters': {'binary_data': False}}]},
                 elements)


def statuses(counter: collections.Counter) -> str:
  return ', '.join(f'{status} x{count}' for status, count in sorted(counter.items(), key=str))


def post_all(spec: AttackSpec, requests, concurrency: int) -> collections.Counter:
  """Sends each (body, headers) with ``concurrency`` clients; the count of each status."""
  import httpx
  counts = collections.Counter()
  deadline = time.monotonic() + spec.seconds

  def send(request):
    if time.monotonic() > deadline:
      return 'not sent (time limit)'
    try:
      with httpx.Client(base_url=spec.base, timeout=spec.seconds) as client:
        return client.post(spec.infer_path, content=request[0], headers=request[1]).status_code
    except httpx.HTTPError as error:
      return type(error).__name__

  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    for status in pool.map(send, requests):
      counts[status] += 1
  return counts


# ---------------------------------------------------------------------------------------------
# The attacks: each returns what the attacker saw, in a few words (the client runs beside it).


def _slow(spec: AttackSpec, start: bytes, byte: bytes) -> str:
  sockets = []
  for _ in range(spec.sockets):
    sock = socket.create_connection((spec.host, spec.port), timeout=10)
    sock.sendall(start)
    sockets.append(sock)
  end = time.monotonic() + spec.seconds
  while time.monotonic() < end:
    for sock in sockets:
      try:
        sock.sendall(byte)
      except OSError:
        pass
    time.sleep(1.0)
  answers = collections.Counter()
  for sock in sockets:
    sock.setblocking(False)
    try:
      data = sock.recv(65536)
      answers[data.split(b' ', 2)[1].decode() if data else 'closed'] += 1
    except BlockingIOError:
      answers['still open'] += 1
    except OSError:
      answers['reset'] += 1
    sock.close()
  return f'{spec.sockets} sockets after {spec.seconds:g} s: {statuses(answers)}'


def slow_headers(spec: AttackSpec, client: Client) -> str:
  return _slow(spec, f'POST {spec.infer_path} HTTP/1.1\r\nHost: {spec.host}\r\nX-Slow: '.encode(),
               b'x')


def slow_body(spec: AttackSpec, client: Client) -> str:
  return _slow(spec, f'POST {spec.infer_path} HTTP/1.1\r\nHost: {spec.host}\r\n'
               'Content-Length: 100000\r\n\r\n'.encode(), b'x')


def malformed(spec: AttackSpec, client: Client) -> str:
  import grpc
  import tritonclient.grpc as grpcclient
  from tritonclient.grpc import service_pb2
  bodies = malformed_bodies()
  rest = post_all(spec, [bodies[i % len(bodies)] for i in range(200)], concurrency=4)
  client = grpcclient.InferenceServerClient(f'{spec.host}:{spec.grpc_port}')
  codes = collections.Counter()
  for _ in range(20):
    request = service_pb2.ModelInferRequest(model_name=spec.model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = 'image_bytes', 'BYTES'
    tensor.shape.extend([1])
    request.raw_input_contents.append(b'\x05\x00\x00')
    try:
      client._client_stub.ModelInfer(request, timeout=spec.seconds)
      codes['OK'] += 1
    except grpc.RpcError as error:
      codes[error.code().name] += 1
  client.close()
  return f'REST {statuses(rest)}; gRPC {statuses(codes)}'


def binary_outputs(spec: AttackSpec, client: Client) -> str:
  import httpx
  image = np.zeros((1, *CLIENT_SIZE, 3), np.uint8)
  seen = collections.Counter()
  with httpx.Client(base_url=spec.base, timeout=spec.seconds) as client:
    for name in ('mask_png', 'labels') * 30:
      body, headers = binary_request(image, {'binary_data_output': True}, [{'name': name}])
      try:
        response = client.post(spec.infer_path, content=body, headers=headers)
      except httpx.HTTPError as error:
        seen[f'{name}: {type(error).__name__}'] += 1
        continue
      binary = 'inference-header-content-length' in response.headers
      what = f'{response.status_code} {"binary" if binary else "JSON"}'
      if response.status_code != 200:
        what += f' ({len(response.content) // 100 / 10:g} kB)'
      seen[f'{name}: {what}'] += 1
  return statuses(seen)


def big_json(spec: AttackSpec, client: Client) -> str:
  import httpx
  body, headers = zero_pngs_as_json(8, BIG_SIZE)
  answers = []

  def send(_):
    start = time.perf_counter()
    try:
      with httpx.Client(base_url=spec.base, timeout=spec.seconds) as client:
        response = client.post(spec.infer_path, content=body, headers=headers)
      answers.append((response.status_code, len(response.content),
                      time.perf_counter() - start))
    except httpx.HTTPError as error:
      answers.append((type(error).__name__, 0, time.perf_counter() - start))

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    list(pool.map(send, range(8)))
  counts = collections.Counter(status for status, _, _ in answers)
  return (f'{statuses(counts)}; answers of {max(size for _, size, _ in answers) / 1e6:.1f} MB '
          f'at most, {max(seconds for _, _, seconds in answers):.1f} s at most')


def flood(spec: AttackSpec, client: Client) -> str:
  request = binary_request(np.zeros((1, *BIG_SIZE, 3), np.uint8), {'binary_data_output': True})
  return statuses(post_all(spec, [request] * 96, concurrency=48))


def metric(spec: AttackSpec, name: str) -> float:
  import httpx
  for line in httpx.get(spec.base + '/metrics', timeout=30).text.splitlines():
    sample, _, value = line.rpartition(' ')
    if sample == name:
      return float(value)
  return 0.0


def disconnect(spec: AttackSpec, client: Client) -> str:
  before = metric(spec, 'bisenet_batch_images_sum') - client.answered()
  body, headers = binary_request(np.zeros((1, *BIG_SIZE, 3), np.uint8),
                                 {'binary_data_output': True})
  sockets = []
  for _ in range(32):
    sock = socket.create_connection((spec.host, spec.port), timeout=10)
    sock.sendall(raw_request(spec, body, headers))
    sockets.append(sock)
  time.sleep(0.2)
  for sock in sockets:
    sock.close()
  end = time.monotonic() + spec.seconds
  while time.monotonic() < end and metric(spec, 'bisenet_queue_images') > 0:
    time.sleep(0.5)
  time.sleep(2.0)  # The last batch, if one runs.
  ran = metric(spec, 'bisenet_batch_images_sum') - client.answered() - before
  return f'32 clients left: the server still ran {ran:.0f} of their images'


def repository(spec: AttackSpec, client: Client) -> str:
  import httpx
  import tritonclient.grpc as grpcclient
  from tritonclient.utils import InferenceServerException
  rest = collections.Counter()
  with httpx.Client(base_url=spec.base, timeout=spec.seconds) as client:
    for path in (f'/v2/repository/models/{spec.model}/load',
                 f'/v2/repository/models/{spec.model}/unload', '/v2/repository/index') * 30:
      try:
        rest[client.post(path).status_code] += 1
      except httpx.HTTPError as error:
        rest[type(error).__name__] += 1
  codes = collections.Counter()
  grpc = grpcclient.InferenceServerClient(f'{spec.host}:{spec.grpc_port}')
  for call in ('load_model', 'unload_model') * 10:
    try:
      getattr(grpc, call)(spec.model)
      codes['OK'] += 1
    except InferenceServerException as error:
      codes[error.status().replace('StatusCode.', '')] += 1
  grpc.close()
  return f'REST {statuses(rest)}; gRPC {statuses(codes)}'


RUNS = {'slow-headers': slow_headers, 'slow-body': slow_body, 'malformed': malformed,
        'binary-outputs': binary_outputs, 'big-json': big_json, 'flood': flood,
        'disconnect': disconnect, 'repository': repository}


def run_attack(spec: AttackSpec, name: str) -> dict:
  """One attack with the client and the watcher around it: its row of the table."""
  watcher = Watcher(spec.pid)
  before = watcher.sample()
  tracebacks = traceback_count(spec)
  client = Client(spec)
  watcher.start()
  client.start()
  start = time.monotonic()
  outcome = RUNS[name](spec, client)
  seconds = time.monotonic() - start
  client.finish()
  peak = watcher.finish()['max'] or before
  time.sleep(1.0)
  after = watcher.sample()
  added = traceback_count(spec)
  return {'attack': name, 'outcome': outcome, 'seconds': round(seconds, 1),
          'infer_ms': client.percentiles('infer'), 'health_ms': client.percentiles('health'),
          'client_failures': statuses(client.failures) or 'none',
          'rss_mb': f'{before[0]:.0f} / {peak[0]:.0f} / {after[0]:.0f}',
          'fds': f'{before[1]} / {peak[1]} / {after[1]}',
          'sockets': f'{before[2]} / {peak[2]} / {after[2]}',
          'tracebacks': None if tracebacks is None else added - tracebacks}


COLUMNS = (('attack', 'attack'), ('outcome', "attacker's outcome"), ('seconds', 's'),
           ('infer_ms', 'client infer p50 / p99 ms'), ('health_ms', 'health p50 / p99 ms'),
           ('client_failures', 'client failures'), ('rss_mb', 'RSS MB before / max / after'),
           ('fds', 'fds before / max / after'), ('sockets', 'sockets before / max / after'),
           ('tracebacks', 'tracebacks logged'))


def table(rows: list[dict]) -> str:
  lines = ['| ' + ' | '.join(title for _, title in COLUMNS) + ' |',
           '|' + '---|' * len(COLUMNS)]
  for row in rows:
    lines.append('| ' + ' | '.join(str(row[key]) for key, _ in COLUMNS) + ' |')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# The command.


def listening_pid(port: int) -> int | None:
  """The process of this user listening on ``port`` (Linux /proc), or None."""
  inodes = set()
  for table_path in ('/proc/net/tcp', '/proc/net/tcp6'):
    try:
      with open(table_path) as tcp:
        for line in list(tcp)[1:]:
          fields = line.split()
          if int(fields[1].rsplit(':', 1)[1], 16) == port and fields[3] == '0A':
            inodes.add(fields[9])
    except OSError:
      pass
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      for fd in os.listdir(f'/proc/{pid}/fd'):
        link = os.readlink(f'/proc/{pid}/fd/{fd}')
        if link.startswith('socket:[') and link[8:-1] in inodes:
          return int(pid)
    except OSError:
      continue
  return None


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.bench.serve_attack',
                                   description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split('\n\n', 2)[2])
  parser.add_argument('--url', required=True, help='the server, http://127.0.0.1:PORT')
  parser.add_argument('--grpc-port', type=int, required=True, help="the server's gRPC port")
  parser.add_argument('--model-name', default='bisenet')
  parser.add_argument('--pid', type=int,
                      help="the server's process (default: the one listening on --url's port)")
  parser.add_argument('--server-log', help="the server's stderr, to count tracebacks in")
  parser.add_argument('--attacks', default=','.join(ATTACKS),
                      help=f'which, in order (default all: {",".join(ATTACKS)})')
  parser.add_argument('--sockets', type=int, default=200, help="the slow attacks' sockets")
  parser.add_argument('--seconds', type=float, default=30.0, help="each attack's time limit")
  parser.add_argument('--output', help='also write the rows as JSON lines here')
  return parser.parse_args(argv)


def attack_spec(args: argparse.Namespace) -> AttackSpec:
  parsed = urllib.parse.urlsplit(args.url)
  try:
    loopback = ipaddress.ip_address(parsed.hostname or '').is_loopback and parsed.port
  except ValueError:
    loopback = False
  if not loopback or parsed.scheme != 'http':
    raise UserError(f'--url {args.url}: give http://127.0.0.1:PORT, a server on this machine '
                    '(the attacks go to loopback addresses only)')
  unknown = set(args.attacks.split(',')) - set(ATTACKS)
  if unknown:
    raise UserError(f'--attacks: unknown {", ".join(sorted(unknown))}; pick from '
                    f'{", ".join(ATTACKS)}')
  return AttackSpec(parsed.hostname, parsed.port, args.grpc_port, args.model_name,
                    args.pid or listening_pid(parsed.port), args.server_log, args.sockets,
                    args.seconds)


def main(argv=None) -> None:
  from bisenet_jax import cli
  args = parse_args(argv)
  run = cli.user_errors_exit(lambda: _run(args))
  run()


def _run(args: argparse.Namespace) -> None:
  spec = attack_spec(args)
  rows = []
  for name in args.attacks.split(','):
    rows.append(run_attack(spec, name))
    print(json.dumps(rows[-1]), flush=True)
    if args.output:
      with open(args.output, 'a') as output:
        output.write(json.dumps(rows[-1]) + '\n')
  print(table(rows))


if __name__ == '__main__':
  main()
