"""The REST app (FastAPI on uvicorn) and the gRPC server around one ``SegmentationModel``, bound
to the spec's host, and their orderly stop.

kserve provides the protocol: ``DataPlane`` and ``ModelRepository`` (model lookup, metadata,
readiness) and the gRPC ``InferenceServicer``. Its ``ModelServer.start`` is not used: it binds
every interface with no host option, puts its own liveness route at ``/`` (the page's), and its
signal handling does not drain.

Stop (SIGTERM, SIGINT): both listeners close at once (a new connection is refused), every
request already accepted is answered (uvicorn and gRPC wait up to ``GRACE_S`` for them, the
batcher answers every queued image), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import uvicorn
from grpc import aio
from kserve import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc

from bisenet_jax.errors import UserError
from bisenet_jax.specs import format_size
from bisenet_jax.serve import metrics
from bisenet_jax.serve.batching import Batcher, fastest_batch
from bisenet_jax.serve.gate import guarded_http
from bisenet_jax.serve.model import SegmentationModel, network_name
from bisenet_jax.serve.routes import build_app
from bisenet_jax.serve.rpc import Servicer, StatusAndMetrics
from bisenet_jax.serve.spec import Limits, ServeSpec

# Seconds each server waits for the requests in flight at a stop: answered within 10 s in all.
GRACE_S = 8.0


class ServingDataPlane(DataPlane):
  """kserve's ``DataPlane``, whose server readiness (REST /v2/health/ready, gRPC ServerReady)
  is its models' (kserve's is always true): false once the batcher's worker has stopped."""

  async def ready(self) -> bool:
    models = self.model_registry.get_models().values()
    return all([await model.healthy() for model in models])


class _Uvicorn(uvicorn.Server):
  """uvicorn without its signal handlers: ``serve`` owns the stop (uvicorn's would re-raise
  the signal after its shutdown, and the process would not exit 0)."""

  def capture_signals(self):
    return contextlib.nullcontext()


def listening_socket(host: str, port: int) -> socket.socket:
  """The REST listener, bound here so a taken port is a one-line error.

  Made with ``IPPROTO_TCP`` explicitly (``socket.create_server`` passes 0): asyncio turns
  ``TCP_NODELAY`` on only for connections of such a socket, and without it an answer's body
  waits for the client's delayed acknowledgement of its headers (Nagle's algorithm), ~40 ms.
  """
  family = socket.AF_INET6 if ':' in host else socket.AF_INET
  listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
  try:
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(socket.SOMAXCONN)
    return listener
  except OSError as error:
    listener.close()
    raise UserError(f'cannot listen on {host}:{port} ({error.strerror}): pick another --host '
                    'or --port') from None


def grpc_options(limits: Limits) -> list[tuple[str, int]]:
  """gRPC core's channel arguments for ``limits``: the largest message each way (an answer
  holds at most two bytes per pixel of a full request: labels and a PNG no bigger, plus room for
  the PNGs' own headers), streams per connection, the handshake's deadline, idle and old
  connections."""
  answer_bytes = 2 * limits.max_batch_size * limits.max_pixels + (1 << 20)
  return [('grpc.max_receive_message_length', limits.max_request_bytes),
          ('grpc.max_send_message_length', answer_bytes),
          ('grpc.max_concurrent_streams', limits.grpc_max_streams),
          ('grpc.server_handshake_timeout_ms', int(limits.header_timeout_s * 1000)),
          ('grpc.max_connection_idle_ms', int(limits.keep_alive_s * 1000)),
          # A connection is sent GOAWAY after --request-timeout-s, and its calls get as long
          # again to end: a call whose message trickles in cannot hold a slot for longer.
          ('grpc.max_connection_age_ms', int(limits.request_timeout_s * 1000)),
          ('grpc.max_connection_age_grace_ms', int(limits.request_timeout_s * 1000)),
          ('grpc.so_reuseport', 0)]


def grpc_server(dataplane: DataPlane, host: str, port: int, limits: Limits):
  server = aio.server(interceptors=[StatusAndMetrics(limits.request_timeout_s)],
                      options=grpc_options(limits),
                      maximum_concurrent_rpcs=limits.grpc_max_rpcs)
  grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
      Servicer(dataplane, None), server)
  address = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
  try:
    bound = server.add_insecure_port(address)
  except RuntimeError:
    bound = 0
  if not bound:
    raise UserError(f'cannot listen for gRPC on {address}: pick another --host or --grpc-port')
  return server


async def serve(model: SegmentationModel, spec: ServeSpec, ready_line: str) -> None:
  """Serves until SIGTERM or SIGINT, then stops as the module docstring says."""
  repository = ModelRepository()
  repository.update(model)
  dataplane = ServingDataPlane(model_registry=repository)
  app = build_app(dataplane, model, spec.limits)
  rest_socket = listening_socket(spec.host, spec.port)
  config = uvicorn.Config(app, log_config=None, access_log=False, lifespan='off',
                          timeout_graceful_shutdown=GRACE_S, loop='asyncio',
                          http=guarded_http(spec.limits),
                          timeout_keep_alive=spec.limits.keep_alive_s)
  rest = _Uvicorn(config)
  grpc = grpc_server(dataplane, spec.host, spec.grpc_port, spec.limits)
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for sig in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(sig, stop.set)
  await grpc.start()
  rest_task = asyncio.create_task(rest.serve(sockets=[rest_socket]))
  while not rest.started:
    if rest_task.done():
      rest_task.result()
      raise UserError('the REST server stopped while starting')
    await asyncio.sleep(0.01)
  metrics.QUEUE_IMAGES.set_function(lambda: model.batcher.waiting)
  print(ready_line, flush=True)
  await stop.wait()
  rest.should_exit = True
  await asyncio.gather(rest_task, grpc.stop(GRACE_S))
  await asyncio.to_thread(model.batcher.close)
  print(f'stopped serving {model.name}: every accepted request answered', file=sys.stderr,
        flush=True)


def run(segmenter, spec: ServeSpec) -> None:
  """Warms ``segmenter`` up, puts a batcher before it and serves it (``serve``)."""
  limits = spec.limits
  # JAX compiles a program per batch shape: batches run padded to few shapes (batching.py).
  pad = segmenter.backend.name == 'jax'
  if pad and not spec.warmup:
    raise UserError('a JAX model serves only the image sizes it compiles before it is ready: '
                    'pass --warmup HxW[,HxW...], or serve an exported .onnx (any size)')
  batch_limit = None
  if spec.warmup:
    batch_limit, rates = fastest_batch(segmenter.batch, spec.warmup, limits.max_batch_size)
    print(f'warm-up at {", ".join(format_size(size) for size in spec.warmup)}: '
          + ', '.join(f'{rate:.2f}' for rate in rates.values())
          + f' images/s in batches of {", ".join(map(str, rates))}: requests pool into '
          f'batches of up to {batch_limit}', file=sys.stderr, flush=True)
  # A JAX model serves the sizes it compiled at warm-up only: a new size would compile on the
  # batcher's one thread (seconds, and memory that is never given back).
  batcher = Batcher(segmenter.batch, max_batch_size=limits.max_batch_size,
                    max_delay=spec.max_batch_delay_s, max_queue=spec.max_queue, pad=pad,
                    on_batch=metrics.record_batch, batch_limit=batch_limit,
                    sizes=spec.warmup if pad else None)
  model = SegmentationModel(spec.model_name, segmenter, batcher, limits)
  ready_line = (f'serving {spec.model_name} ({network_name(segmenter)}, '
                f'{segmenter.backend.description}) on {spec.rest_address}, '
                f'gRPC {spec.grpc_address}')
  asyncio.run(serve(model, spec, ready_line))
