"""What hostile or careless load costs a server's other clients: figures for docs/serving.md.

  python -m bisenet_jax.bench.serve_faults compile --checkpoint runs/fastscnn \
      --sizes 256x512,384x768,512x1024
  python -m bisenet_jax.bench.serve_faults new-sizes --checkpoint runs/fastscnn \
      --warmup 256x512 --new-sizes 30
  python -m bisenet_jax.bench.serve_faults threads --checkpoint r18_int8.onnx --threads 1,2 \
      --input-size 512x1024

* ``compile``: a JAX checkpoint in this process; per image size and batch size, the seconds of
  its first call beyond a later one (the compilation) and the process's resident memory after
  it beyond before (the program and its buffers).
* ``new-sizes``: a server warmed up at one size; a client sends requests of that size, one at a
  time, alone and then while another sends ``--new-sizes`` requests of sizes never seen
  before. Its latency percentiles in both phases, the other's answers, and the server's
  resident memory before and after.
* ``threads``: a server per ``--threads`` value under a load of ``--concurrency`` clients: its
  img/s and latency, and the threads of its process that computed (``serve_load.busy_threads``).

Every server runs on free ports of 127.0.0.1 (``serve.process``); the CPU is named in the output.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import threading
import time

import numpy as np

from bisenet_jax import cli
from bisenet_jax.bench import serve_load
from bisenet_jax.errors import UserError
from bisenet_jax.serve.process import ServerProcess
from bisenet_jax.specs import format_size


def resident_mb(pid: int | None = None) -> float:
  import psutil
  return psutil.Process(pid).memory_info().rss / 2**20


def compile_costs(checkpoint: str, sizes, rows=(1,), repeats: int = 3) -> list[dict]:
  """Per (rows, size): compile ms (first call minus the fastest of ``repeats`` later ones),
  its run ms, and the MB of resident memory the first call added."""
  from bisenet_jax.segmenter import Segmenter
  segmenter = Segmenter.load(checkpoint)
  segmenter.batch(np.zeros((1, 16, 16, 3), np.uint8))  # The runtime's own start, apart.
  points = []
  for size in sizes:
    for count in rows:
      images = np.zeros((count, *size, 3), np.uint8)
      gc.collect()
      before = resident_mb()
      start = time.perf_counter()
      segmenter.batch(images)
      first = time.perf_counter() - start
      gc.collect()
      added = resident_mb() - before
      runs = []
      for _ in range(repeats):
        start = time.perf_counter()
        segmenter.batch(images)
        runs.append(time.perf_counter() - start)
      points.append({'size': format_size(size), 'rows': count,
                     'compile_ms': 1e3 * (first - min(runs)), 'run_ms': 1e3 * min(runs),
                     'resident_mb_added': added})
  return points


def _percentiles(seconds: list[float]) -> dict:
  if not seconds:
    return {'count': 0}
  ms = 1e3 * np.asarray(seconds)
  return {'count': len(ms), 'p50_ms': float(np.percentile(ms, 50)),
          'p99_ms': float(np.percentile(ms, 99)), 'max_ms': float(ms.max())}


def new_sizes(checkpoint: str, warmup: tuple[int, int], count: int, requests: int = 30,
              flags=(), env=None) -> dict:
  """A steady client's latency over ``requests`` requests alone, then over as many (or more,
  until each of ``count`` new sizes was sent once) while another client sends requests of new
  sizes one at a time; their answers; the server's resident memory before and after."""
  httpclient = serve_load.http_client_module()
  steady_image = serve_load.street_frames(warmup, count=1)[0]
  height, width = warmup
  # Sizes near the warm one, none of them equal to it or to each other.
  others = [(max(8, height // 2) + 8 * (i + 1), max(8, width // 2) + 8 * (i + 1))
            for i in range(count)]
  with ServerProcess(checkpoint, '--warmup', format_size(warmup), *flags, env=env) as server:
    client = httpclient.InferenceServerClient(server.url, network_timeout=600)

    def steady(requests: int, also: threading.Event | None = None) -> list[float]:
      """``requests`` requests, and more until ``also`` is set."""
      seconds = []
      while len(seconds) < requests or (also is not None and not also.is_set()):
        outcome, elapsed, detail = serve_load.one_request(httpclient, client, steady_image)
        if outcome != 'ok':
          raise UserError(f'the steady client was answered {outcome}: {detail}')
        seconds.append(elapsed)
      return seconds

    images = [serve_load.street_frames(size, count=1)[0] for size in others]  # Not drawn during.
    idle = steady(requests)
    memory_before = resident_mb(server.process.pid)
    all_sent, stop, outcomes, attack_seconds = threading.Event(), threading.Event(), [], []

    def attack():
      """Each new size in turn, again from the first once all are sent, until ``stop``."""
      attacker = httpclient.InferenceServerClient(server.url, network_timeout=600)
      try:
        for index in itertools.count():
          if stop.is_set():
            break
          image = images[index % len(images)]
          outcome, elapsed, detail = serve_load.one_request(httpclient, attacker, image)
          outcomes.append((outcome, None if outcome == 'ok' else str(detail)))
          attack_seconds.append(elapsed)
          if index + 1 == len(images):
            all_sent.set()
      finally:
        attacker.close()
        all_sent.set()

    attacker = threading.Thread(target=attack)
    attacker.start()
    during = steady(requests, also=all_sent)
    stop.set()
    attacker.join()
    memory_after = resident_mb(server.process.pid)
    client.close()
  answers = {}  # Per kind of answer ('ok', 'failed [400]', ...): how many, the first's text.
  for outcome, detail in outcomes:
    status = detail.split()[0] if detail and detail.startswith('[') else ''
    kind = f'{outcome} {status}'.strip()
    answers.setdefault(kind, {'count': 0, 'first': detail})['count'] += 1
  return {'checkpoint': checkpoint, 'warmup': format_size(warmup), 'new_sizes': count,
          'new_size_requests': len(outcomes),
          'steady_idle': _percentiles(idle), 'steady_during': _percentiles(during),
          'new_size_answers': answers, 'new_size_request': _percentiles(attack_seconds),
          'resident_mb_before': memory_before, 'resident_mb_after': memory_after,
          'resident_mb_per_new_size': (memory_after - memory_before) / count}


def threads(checkpoint: str, counts, size: tuple[int, int], concurrency: int, requests: int,
            flags=(), env=None) -> list[dict]:
  """Per ``--threads`` value: img/s, latency and busy threads of a server under load."""
  images = serve_load.street_frames(size, count=4)
  rows = []
  for count in counts:
    with ServerProcess(checkpoint, '--threads', str(count), '--warmup', format_size(size),
                       *flags, env=env) as server:
      serve_load.run_load(server.url, images, serve_load.LoadSpec(2, 1, 600))  # Warm.
      before = serve_load.thread_cpu_seconds(server.process.pid)
      load = serve_load.run_load(server.url, images,
                                 serve_load.LoadSpec(requests, concurrency, 600))
      after = serve_load.thread_cpu_seconds(server.process.pid)
    rows.append({'threads': count, 'busy_threads': serve_load.busy_threads(before, after),
                 'img_per_s': load['img_per_s'], 'latency_ms_p50': load['latency_ms_p50'],
                 'latency_ms_p99': load['latency_ms_p99'], 'ok': load['ok']})
  return rows


def _sizes(text: str):
  return [cli.size_argument('--sizes')(part) for part in text.split(',') if part]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.bench.serve_faults',
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('measure', choices=['compile', 'new-sizes', 'threads'])
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--sizes', type=_sizes, default=_sizes('256x512,512x1024'),
                      help='compile: image sizes (default 256x512,512x1024)')
  parser.add_argument('--rows', type=lambda text: [int(n) for n in text.split(',')],
                      default=[1], help='compile: batch sizes (default 1)')
  parser.add_argument('--warmup', type=cli.size_argument('--warmup'), default=(256, 512),
                      help="new-sizes: the server's one --warmup size (default 256x512)")
  parser.add_argument('--new-sizes', type=cli.positive_int('--new-sizes'), default=30,
                      help='new-sizes: requests of sizes never seen (default 30)')
  parser.add_argument('--threads', type=lambda text: [int(n) for n in text.split(',')],
                      default=[1, 2], help='threads: the --threads values (default 1,2)')
  parser.add_argument('--input-size', type=cli.size_argument('--input-size'),
                      default=(256, 512), help='threads: the frames (default 256x512)')
  parser.add_argument('--concurrency', type=cli.positive_int('--concurrency'), default=2)
  parser.add_argument('--requests', type=cli.positive_int('--requests'), default=30,
                      help="threads: requests per server; new-sizes: the steady client's per "
                      'phase (default 30)')
  parser.add_argument('--server-flag', action='append', default=[],
                      help='a flag for the servers, e.g. --server-flag=--max-batch-size=1')
  parser.add_argument('--server-env', action='append', default=[], metavar='NAME=VALUE',
                      help="a variable of the servers' environment, e.g. PYTHONPATH=<another "
                      'checkout> to measure its code')
  args = parser.parse_args(argv)
  if not all('=' in item for item in args.server_env):
    raise UserError('--server-env takes NAME=VALUE')
  args.server_env = dict(item.split('=', 1) for item in args.server_env)
  return args


@cli.user_errors_exit
def main(argv=None) -> None:
  args = parse_args(argv)
  env = serve_load.environment()
  print(f"{env['cpu']}, {env['cpu_count']} CPUs", flush=True)
  if args.measure == 'compile':
    result = compile_costs(args.checkpoint, args.sizes, args.rows)
  elif args.measure == 'new-sizes':
    result = new_sizes(args.checkpoint, args.warmup, args.new_sizes, args.requests,
                       flags=args.server_flag, env=args.server_env)
  else:
    result = threads(args.checkpoint, args.threads, args.input_size, args.concurrency,
                     args.requests, flags=args.server_flag, env=args.server_env)
  json.dump({'measure': args.measure, **env, 'result': result}, sys.stdout, indent=1)
  print()


if __name__ == '__main__':
  main()
