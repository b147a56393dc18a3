"""``python -m bisenet_jax.bench serve``: a bounded load on ``python -m bisenet_jax.serve``, beside
the model's own speed in this process.

For each model and batching choice a server is started on free ports of 127.0.0.1 (or, once,
the one at ``--url``, which must be on this machine and batches as it was started to: its row
says so, e.g. 'on (--url)'), sent a fixed number of requests at each
concurrency (one Open Inference Protocol client per worker thread, binary ``image`` in, binary
``labels`` out, street frames drawn from a seed) with a time limit, then stopped. Each point
counts the requests answered, refused (503: the server's queue was full) and failed, its
throughput, the latency percentiles of the answered ones, and the mean batch they ran in
(``parameters.batch_size`` of each response), and the median time inside the server
(``server_ms``: arrival to answer) and of its forward passes (``compute_ms``). The model alone
(the ``Segmenter`` the server runs, test resize included) is timed first, with no server
running, at batch 1 and at each batch size up to the server's largest; the two goals compare
the server with it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import platform
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

from bisenet_jax.errors import UserError
from bisenet_jax.serve.batching import batch_sizes, images_per_second, time_batches
from bisenet_jax.serve.process import ServerProcess
from bisenet_jax.specs import format_size

FRAMES = 8  # Distinct frames, sent in turn.
MODEL_NAME = 'bisenet'
# The goals a point is held to (docs/serving.md, "Speed").
THROUGHPUT_GOAL = 0.9  # At the highest concurrency: this share of the best in-process img/s.
OVERHEAD_GOAL_MS = 15.0  # At concurrency 1: p50 latency at most the model's batch-1 ms plus this.
REFUSED_STATUS = '503'


@dataclasses.dataclass(frozen=True)
class LoadSpec:
  """One load: ``requests`` single-image requests from ``concurrency`` workers, none started
  after ``time_limit_s``."""
  requests: int
  concurrency: int
  time_limit_s: float


def loopback_url(url: str) -> str:
  """'http://127.0.0.1:8080' or '127.0.0.1:8080' -> '127.0.0.1:8080' (what tritonclient
  takes); any host but this machine's loopback is refused: the benchmark loads no one else's
  server."""
  parsed = urllib.parse.urlsplit(url if '//' in url else f'http://{url}')
  host = parsed.hostname or ''
  try:
    loopback = host == 'localhost' or ipaddress.ip_address(host).is_loopback
    port = parsed.port
  except ValueError:
    loopback, port = False, None
  if not loopback or port is None or parsed.scheme != 'http':
    raise UserError(f'--url {url}: give http://127.0.0.1:PORT, a server on this machine (the '
                    'benchmark sends load to loopback addresses only)')
  return f'{host}:{port}' if ':' not in host else f'[{host}]:{port}'


def street_frames(size: tuple[int, int], count: int = FRAMES, seed: int = 0) -> np.ndarray:
  """uint8 [count, H, W, 3] synthetic street frames, the same for the same seed."""
  from bisenet_jax.data.synthetic import draw_street_scene
  rng = np.random.default_rng(seed)
  return np.stack([draw_street_scene(rng, *size)[0] for _ in range(count)])


def http_client_module():
  try:
    import tritonclient.http as httpclient
  except ImportError:
    raise UserError("the serve benchmark's client is tritonclient: pip install "
                    "'tritonclient[http]'") from None
  return httpclient


def start_server(checkpoint: str, max_batch_size: int, warmup_size: tuple[int, int],
                 threads: int | None = None) -> ServerProcess:
  """The server of one point: ``checkpoint`` warmed up at the frames' size."""
  flags = ['--model-name', MODEL_NAME, '--max-batch-size', str(max_batch_size),
           '--warmup', format_size(warmup_size)]
  return ServerProcess(checkpoint, *flags, *(['--threads', str(threads)] if threads else []))


def model_metadata(url: str) -> dict:
  client = http_client_module().InferenceServerClient(url)
  try:
    return client.get_model_metadata(MODEL_NAME)
  finally:
    client.close()


def run_load(url: str, images: np.ndarray, load: LoadSpec) -> dict:
  """Sends ``load.requests`` requests of one image each (``images`` in turn) from
  ``load.concurrency`` threads; returns the counts, rates and latencies."""
  httpclient = http_client_module()
  lock = threading.Lock()
  issued = [0]
  latencies, parameters, outcomes = [], [], {'ok': 0, 'refused': 0, 'failed': 0}
  errors: list[str] = []
  deadline = time.perf_counter() + load.time_limit_s

  def next_index() -> int | None:
    with lock:
      if issued[0] >= load.requests or time.perf_counter() >= deadline:
        return None
      issued[0] += 1
      return issued[0] - 1

  def worker():
    client = httpclient.InferenceServerClient(url, network_timeout=load.time_limit_s + 60)
    try:
      while (index := next_index()) is not None:
        outcome, seconds, detail = one_request(httpclient, client,
                                                images[index % len(images)])
        with lock:
          outcomes[outcome] += 1
          if outcome == 'ok':
            latencies.append(seconds)
            parameters.append(detail)
          elif outcome == 'failed' and len(errors) < 3:
            errors.append(detail)
    finally:
      client.close()

  start = time.perf_counter()
  threads = [threading.Thread(target=worker) for _ in range(load.concurrency)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  wall = time.perf_counter() - start
  ms = 1e3 * np.asarray(latencies)
  percentile = (lambda q: float(np.percentile(ms, q))) if len(ms) else (lambda q: None)

  def median(key):
    values = [p[key] for p in parameters if p.get(key) is not None]
    return float(np.median(values)) if values else None
  return {'requests': load.requests, **outcomes, 'unsent': load.requests - issued[0],
          'wall_s': wall, 'img_per_s': outcomes['ok'] / wall,
          'latency_ms_p50': percentile(50), 'latency_ms_p90': percentile(90),
          'latency_ms_p99': percentile(99),
          'mean_batch_size': (float(np.mean([p['batch_size'] for p in parameters]))
                              if parameters else None),
          'server_ms_p50': median('server_ms'), 'compute_ms_p50': median('compute_ms'),
          'errors': errors}


def one_request(httpclient, client, image: np.ndarray):
  """('ok', seconds, the response's parameters: batch_size, server_ms, compute_ms),
  ('refused', seconds, None) or ('failed', seconds, why)."""
  tensor = httpclient.InferInput('image', [1, *image.shape], 'UINT8')
  tensor.set_data_from_numpy(image[None], binary_data=True)
  output = httpclient.InferRequestedOutput('labels', binary_data=True)
  start = time.perf_counter()
  try:
    result = client.infer(MODEL_NAME, [tensor], outputs=[output])
    labels = result.as_numpy('labels')
  except Exception as e:  # tritonclient's own errors, and the socket's.
    status = getattr(e, 'status', lambda: None)()
    kind = 'refused' if status == REFUSED_STATUS else 'failed'
    return kind, time.perf_counter() - start, None if kind == 'refused' else str(e)[:200]
  seconds = time.perf_counter() - start
  if labels is None or labels.shape != (1, *image.shape[:2]):
    return 'failed', seconds, f'labels of shape {getattr(labels, "shape", None)}'
  parameters = result.get_response().get('parameters', {})
  if 'batch_size' not in parameters:
    return 'failed', seconds, 'the response has no parameters.batch_size'
  return 'ok', seconds, parameters


def model_speed(checkpoint: str, images: np.ndarray, max_batch_size: int, warmup: int,
                steps: int, threads: int | None) -> dict:
  """The model alone in this process, through the ``Segmenter`` the server runs (the same
  work: the test resize, the model, the labels back at the frames' size), timed as the server's
  warm-up times it (``batching.time_batches``): the median ms of a batch-1 call, and img/s (of
  the fastest of ``steps`` rounds) at its best batch size among the server's,
  ``batch_sizes(max_batch_size)``."""
  from bisenet_jax.segmenter import Segmenter
  segmenter = Segmenter.load(checkpoint, threads=threads)
  run, description = segmenter.batch, f'Segmenter, {segmenter.backend.description}'
  times = time_batches(run, [images], batch_sizes(max_batch_size), repeats=steps,
                       warmup=max(warmup, 1))
  rates = images_per_second(times)
  best = max(rates, key=rates.get)
  return {'model_runner': description, 'model_ms_batch1': 1e3 * float(np.median(times[1])),
          'model_img_per_s': rates[best], 'model_best_batch': best,
          'model_img_per_s_by_batch': {str(b): r for b, r in rates.items()}}


def goals(row: dict) -> dict:
  """The row's ratios to the model alone: throughput share and latency overhead."""
  overhead = (None if row['latency_ms_p50'] is None else
              row['latency_ms_p50'] - row['model_ms_batch1'])
  return {'throughput_vs_model': row['img_per_s'] / row['model_img_per_s'],
          'p50_overhead_ms': overhead}


def goal_lines(rows: list[dict]) -> list[str]:
  """Per model and batching: the throughput goal at the highest concurrency measured and the
  latency goal at concurrency 1, met or not."""
  lines = []
  for key in dict.fromkeys((r['checkpoint'], r['batching']) for r in rows):
    points = [r for r in rows if (r['checkpoint'], r['batching']) == key]
    top = max(points, key=lambda r: r['concurrency'])
    name = f'{Path(key[0]).name} batching {key[1]}'
    share = top['throughput_vs_model']
    lines.append(f"{name}: c{top['concurrency']} {top['img_per_s']:.2f} img/s = {share:.0%} of "
                 f"in-process best {top['model_img_per_s']:.2f} (goal >= "
                 f"{THROUGHPUT_GOAL:.0%}: {'met' if share >= THROUGHPUT_GOAL else 'NOT met'})")
    single = next((r for r in points if r['concurrency'] == 1), None)
    if single and single['p50_overhead_ms'] is not None:
      overhead = single['p50_overhead_ms']
      lines.append(f"{name}: c1 p50 {single['latency_ms_p50']:.1f} ms = model "
                   f"{single['model_ms_batch1']:.1f} ms {overhead:+.1f} ms (goal <= +"
                   f"{OVERHEAD_GOAL_MS:.0f} ms: "
                   f"{'met' if overhead <= OVERHEAD_GOAL_MS else 'NOT met'})")
  return lines


COLUMNS = (  # (header, key, format), for report.table.
    ('model', 'model', '{}'), ('backend', 'backend', '{}'), ('batching', 'batching', '{}'),
    ('conc', 'concurrency', '{}'), ('HxW', 'resolution', '{}'), ('req', 'requests', '{}'),
    ('ok', 'ok', '{}'), ('refused', 'refused', '{}'), ('failed', 'failed', '{}'),
    ('unsent', 'unsent', '{}'), ('img/s', 'img_per_s', '{:.2f}'),
    ('p50 ms', 'latency_ms_p50', '{:.0f}'), ('p90 ms', 'latency_ms_p90', '{:.0f}'),
    ('p99 ms', 'latency_ms_p99', '{:.0f}'), ('server ms p50', 'server_ms_p50', '{:.0f}'),
    ('compute ms p50', 'compute_ms_p50', '{:.0f}'), ('mean batch', 'mean_batch_size', '{:.2f}'),
    ('model img/s', 'model_img_per_s', '{:.2f}'), ('@b', 'model_best_batch', '{}'),
    ('model ms b1', 'model_ms_batch1', '{:.0f}'), ('vs model', 'throughput_vs_model', '{:.0%}'),
    ('p50 - model ms', 'p50_overhead_ms', '{:+.0f}'), ('load avg', 'load_average', '{:.2f}'),
)


def thread_cpu_seconds(pid: int) -> dict[int, float]:
  """{thread id: CPU seconds it has run so far} of a process of this machine."""
  import psutil
  return {thread.id: thread.user_time + thread.system_time
          for thread in psutil.Process(pid).threads()}


def busy_threads(before: dict[int, float], after: dict[int, float], share: float = 0.25) -> int:
  """How many threads ran at least ``share`` of the busiest one's CPU time between two
  ``thread_cpu_seconds``: the threads a model computes on, under load (independent of how busy
  the machine's cores are with other work)."""
  spent = [seconds - before.get(thread, 0.0) for thread, seconds in after.items()]
  return sum(seconds >= share * max(spent) for seconds in spent) if spent else 0


def environment() -> dict:
  return {'host': platform.node(), 'cpu': cpu_name(), 'cpu_count': os.cpu_count()}


def cpu_name() -> str:
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


@dataclasses.dataclass(frozen=True)
class ServeSweep:
  """What one ``bench serve`` command measures (built at the edge, ``__main__``).

  Attributes:
    checkpoints: the models (anything ``--checkpoint`` of the server takes).
    url: a running server on this machine ('127.0.0.1:PORT') instead of starting them: it is
      measured once, its batching what its metadata says (``url_batching``).
    batching: ('on', 'off'): the server's ``--max-batch-size`` is ``max_batch_size`` or 1 (the
      servers this sweep starts; not a ``url``'s).
    concurrency, requests, time_limit_s: the loads (``LoadSpec``) of each server.
    input_size: the frames' (height, width).
    warmup, steps, threads: the in-process timing of the model, and both sides' ONNX Runtime
      threads (None: one per core).
  """
  checkpoints: tuple[str, ...]
  url: str | None
  batching: tuple[str, ...]
  max_batch_size: int
  concurrency: tuple[int, ...]
  requests: int
  time_limit_s: float
  input_size: tuple[int, int]
  warmup: int
  steps: int
  threads: int | None


def url_batching(max_batch_size: int | None) -> str:
  """The batching label of a running server's rows: what its metadata says, marked as the
  server's own (the sweep's --batching does not apply to it)."""
  state = 'unknown' if max_batch_size is None else 'on' if max_batch_size > 1 else 'off'
  return f'{state} (--url)'


def run(sweep: ServeSweep, emit) -> list[dict]:
  """Every point of the sweep; ``emit(row)`` as each is measured."""
  images = street_frames(sweep.input_size)
  rows = []
  for checkpoint in sweep.checkpoints:
    model = model_speed(checkpoint, images, sweep.max_batch_size, sweep.warmup, sweep.steps,
                        sweep.threads)
    if sweep.url:  # One server, batching as it was started: measured once.
      served = model_metadata(sweep.url).get('parameters', {})
      max_batch = served.get('max_batch_size')
      rows += _points(sweep, checkpoint, sweep.url, served, url_batching(max_batch), max_batch,
                      images, model, emit)
      continue
    for batching in sweep.batching:
      max_batch = sweep.max_batch_size if batching == 'on' else 1
      with start_server(checkpoint, max_batch, sweep.input_size, sweep.threads) as server:
        served = model_metadata(server.url).get('parameters', {})
        rows += _points(sweep, checkpoint, server.url, served, batching, max_batch, images,
                        model, emit)
  return rows


def _points(sweep: ServeSweep, checkpoint: str, url: str, served: dict, batching: str,
            max_batch: int | None, images: np.ndarray, model: dict, emit) -> list[dict]:
  """One server's row at each concurrency of the sweep."""
  rows = []
  for concurrency in sweep.concurrency:
    load = LoadSpec(sweep.requests, concurrency, sweep.time_limit_s)
    row = {'impl': 'serve', 'mode': 'serve', 'model': Path(checkpoint).name,
           'checkpoint': checkpoint, 'backend': served.get('backend'),
           'network': served.get('network'), 'batching': batching,
           'max_batch_size': max_batch, 'concurrency': concurrency,
           'resolution': format_size(sweep.input_size),
           'time_limit_s': sweep.time_limit_s, **run_load(url, images, load), **model,
           'load_average': os.getloadavg()[0], **environment()}
    row.update(goals(row))
    rows.append(row)
    emit(row)
  return rows
