"""The REST app (FastAPI on uvicorn) and the gRPC server around one ``SegmentationModel``, bound
to --host, and their orderly stop.

kserve provides the protocol: ``DataPlane`` and ``ModelRepository`` (model lookup, metadata,
readiness, request decoding and response encoding), ``register_v2_endpoints`` (health, model
list and readiness routes) and the gRPC ``InferenceServicer``. Its ``ModelServer.start`` is not
used: it binds every interface with no host option, puts its own liveness route at ``/`` (the
page's), and its signal handling does not drain. Three routes come before kserve's router and
take precedence over its own: GET /v2/models/{name} adds ``parameters`` to kserve's metadata
(classes, palette: the page's legend), POST /v2/models/{name}/infer turns any body kserve cannot
decode into a 400 (kserve's answer is a 500), and GET / serves the page.

Stop (SIGTERM, SIGINT): both listeners close at once (a new connection is refused), every
request already accepted is answered (uvicorn and gRPC wait up to ``GRACE_S`` for them, the
batcher answers every queued image), then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
import time
from pathlib import Path


import fastapi
import pydantic
import uvicorn
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from grpc import StatusCode, aio
from grpc_interceptor.exceptions import GrpcException
from grpc_interceptor.exception_to_status import AsyncExceptionToStatusInterceptor
from kserve import ModelRepository, errors
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER, PredictorProtocol
from kserve.logging import logger
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

from bisenet_jax import cli
from bisenet_jax.errors import UserError
from bisenet_jax.specs import format_size
from bisenet_jax.serve import metrics
from bisenet_jax.serve.batching import Batcher, Closed, QueueFull, fastest_batch
from bisenet_jax.serve.model import ARRIVAL, Limits, SegmentationModel, network_name

STATIC = Path(__file__).resolve().parent / 'static'
# Seconds each server waits for the requests in flight at a stop: answered within 10 s in all.
GRACE_S = 8.0

# Status of each refusal, HTTP and gRPC.
_STATUSES = ((errors.InvalidInput, 400, StatusCode.INVALID_ARGUMENT),
             (errors.ModelNotFound, 404, StatusCode.NOT_FOUND),
             (QueueFull, 503, StatusCode.RESOURCE_EXHAUSTED),
             (Closed, 503, StatusCode.UNAVAILABLE),
             (errors.ModelNotReady, 503, StatusCode.UNAVAILABLE),
             (NotImplementedError, 501, StatusCode.UNIMPLEMENTED))


def _status(error: BaseException) -> tuple[int, StatusCode]:
  for kind, http, grpc in _STATUSES:
    if isinstance(error, kind):
      return http, grpc
  return 500, StatusCode.INTERNAL


def _error_response(error: Exception, status: int | None = None) -> JSONResponse:
  """{"error": "<one line>"}, as kserve answers its errors."""
  message = ' '.join(str(error).split()) or type(error).__name__
  return JSONResponse({'error': message}, status_code=status or _status(error)[0])


async def _error_handler(_, error: Exception) -> JSONResponse:
  if _status(error)[0] == 500:
    logger.exception('inference failed', exc_info=error)
  return _error_response(error)


class RequestGate:
  """ASGI middleware of POST .../infer: a body over ``max_bytes`` is a 413 before it is read
  (Content-Length) or while it is (a chunked body's bytes are counted), and every answer is
  counted and timed (metrics) from its arrival."""

  def __init__(self, app, max_bytes: int):
    self.app, self.max_bytes = app, max_bytes

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http' or not scope['path'].endswith('/infer'):
      return await self.app(scope, receive, send)
    start = time.perf_counter()
    ARRIVAL.set(start)
    status = 500

    async def counted_send(message):
      nonlocal status
      if message['type'] == 'http.response.start':
        status = message['status']
      await send(message)

    try:
      body = await self._body(scope, receive)
      if body is None:
        response = _error_response(
            ValueError(f'the request body is over the server\'s --max-request-bytes '
                       f'{self.max_bytes}: send smaller or fewer images'), 413)
        return await response(scope, receive, counted_send)
      await self.app(scope, _replay(body), counted_send)
    finally:
      metrics.record_request('rest', status, time.perf_counter() - start)

  async def _body(self, scope, receive) -> bytes | None:
    """The whole body, or None when it is over the limit."""
    headers = dict(scope['headers'])
    length = headers.get(b'content-length', b'').strip()
    if length.isdigit() and int(length) > self.max_bytes:
      return None
    chunks, size = [], 0
    while True:
      message = await receive()
      if message['type'] == 'http.disconnect':
        break
      chunks.append(message.get('body', b''))
      size += len(chunks[-1])
      if size > self.max_bytes:
        return None
      if not message.get('more_body'):
        break
    return b''.join(chunks)


def _replay(body: bytes):
  sent = False

  async def receive():
    nonlocal sent
    if sent:
      await asyncio.Event().wait()  # Nothing more: as an open connection that sends nothing.
    sent = True
    return {'type': 'http.request', 'body': body, 'more_body': False}

  return receive


def build_app(dataplane: DataPlane, model: SegmentationModel, max_request_bytes: int):
  app = fastapi.FastAPI(title='bisenet-jax', docs_url=None, redoc_url=None)

  @app.get('/v2/models/{model_name}')
  async def model_metadata(model_name: str):
    metadata = await dataplane.model_metadata(model_name)
    return {**metadata, 'parameters': model.parameters()}

  @app.post('/v2/models/{model_name}/infer')
  async def infer(model_name: str, request: fastapi.Request):
    headers = dict(request.headers)
    infer_request = _decode(dataplane, await request.body(), headers, model_name)
    response, _ = await dataplane.infer(model_name, infer_request, headers)
    body, response_headers = dataplane.encode(model_name, response, headers, {})
    if isinstance(body, bytes):
      return Response(body, media_type='application/octet-stream', headers=response_headers)
    return JSONResponse(body, headers=response_headers)

  @app.get('/')
  async def page():
    if not (STATIC / 'index.html').is_file():
      return JSONResponse({'error': 'this installation has no page'}, status_code=404)
    return FileResponse(STATIC / 'index.html')

  app.mount('/static', StaticFiles(directory=STATIC, check_dir=False), name='static')
  app.add_api_route('/metrics', metrics_handler, methods=['GET'])
  register_v2_endpoints(app, dataplane, None)
  for kind in (Exception, errors.InvalidInput, errors.ModelNotFound, errors.ModelNotReady,
               QueueFull, Closed):
    app.add_exception_handler(kind, _error_handler)
  app.add_exception_handler(errors.ServerNotReady, errors.server_not_ready_handler)
  app.add_middleware(RequestGate, max_bytes=max_request_bytes)
  return app


def _decode(dataplane: DataPlane, body: bytes, headers: dict, model_name: str):
  """kserve's ``InferRequest`` of a body, JSON or binary; anything it cannot read is a one-line
  ``InvalidInput`` rather than kserve's 500."""
  try:
    if INFERENCE_CONTENT_LENGTH_HEADER in headers:
      return _binary_request(body, int(headers[INFERENCE_CONTENT_LENGTH_HEADER]), model_name)
    request = InferenceRequest.model_validate_json(body)
    return dataplane.decode(request, headers, PredictorProtocol.REST_V2.value, model_name)[0]
  except errors.InvalidInput:
    raise
  except pydantic.ValidationError as error:
    first = error.errors()[0]
    where = '.'.join(map(str, first['loc'])) or 'body'
    raise errors.InvalidInput(f'the body is not an inference request: {where}: '
                              f'{first["msg"]}') from None
  except (KeyError, ValueError, TypeError, IndexError, AttributeError) as error:
    raise errors.InvalidInput(f'the body is not an inference request ({type(error).__name__}: '
                              f'{error})') from None


def _binary_request(body: bytes, json_length: int, model_name: str) -> InferRequest:
  """A body of the binary tensor extension: a JSON header, then each binary input's bytes.

  Not kserve's ``InferRequest.from_bytes``: it turns binary inputs into Python lists (slow for
  images) through UTF-8 strings, which fails on encoded images (BYTES that are not text).
  """
  if not 0 < json_length <= len(body):
    raise errors.InvalidInput(f'{INFERENCE_CONTENT_LENGTH_HEADER} {json_length} does not fit a '
                              f'body of {len(body)} bytes')
  header = json.loads(body[:json_length])
  inputs, raw, offset = [], [], json_length
  for tensor in header['inputs']:
    parameters = tensor.get('parameters') or {}
    inputs.append(InferInput(tensor['name'], tensor['shape'], tensor['datatype'],
                             data=tensor.get('data'), parameters=parameters))
    size = parameters.get('binary_data_size')
    if 'data' in tensor or size is None:
      raw.append(None)
      continue
    if not isinstance(size, int) or size < 0 or offset + size > len(body):
      raise errors.InvalidInput(f"input {tensor['name']!r}: binary_data_size {size} does not "
                                f'fit the body')
    raw.append(body[offset:offset + size])
    offset += size
  outputs = [RequestedOutput(output['name'], output.get('parameters'))
             for output in header.get('outputs') or ()]
  return InferRequest(model_name, inputs, header.get('id'), raw_inputs=raw,
                      parameters=header.get('parameters'), request_outputs=outputs or None)


class GrpcStatus(AsyncExceptionToStatusInterceptor):
  """Errors to gRPC status codes (without kserve's log line per refused request), and the
  metrics of every ModelInfer call."""

  async def intercept(self, method, request_or_iterator, context, method_name):
    ARRIVAL.set(time.perf_counter())
    response = await super().intercept(method, request_or_iterator, context, method_name)
    if method_name.endswith('/ModelInfer'):
      metrics.record_request('grpc', 200, time.perf_counter() - ARRIVAL.get())
    return response

  async def handle_exception(self, error, request_or_iterator, context, method_name):
    if isinstance(error, GrpcException):
      http, code = 500, error.status_code
    else:
      http, code = _status(error)
    if http == 500:
      logger.exception('inference failed', exc_info=error)
    if method_name.endswith('/ModelInfer'):
      metrics.record_request('grpc', http, time.perf_counter() - ARRIVAL.get())
    await context.abort(code, ' '.join(str(error).split()) or type(error).__name__)


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


def grpc_server(dataplane: DataPlane, host: str, port: int, max_request_bytes: int):
  server = aio.server(interceptors=[GrpcStatus()],
                      options=[('grpc.max_receive_message_length', max_request_bytes),
                               ('grpc.max_send_message_length', -1),
                               ('grpc.so_reuseport', 0)])
  grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
      InferenceServicer(dataplane, None), server)
  address = f'[{host}]:{port}' if ':' in host else f'{host}:{port}'
  try:
    bound = server.add_insecure_port(address)
  except RuntimeError:
    bound = 0
  if not bound:
    raise UserError(f'cannot listen for gRPC on {address}: pick another --host or --grpc-port')
  return server


async def serve(model: SegmentationModel, *, host: str, port: int, grpc_port: int,
                max_request_bytes: int, ready_line: str) -> None:
  """Serves until SIGTERM or SIGINT, then stops as the module docstring says."""
  repository = ModelRepository()
  repository.update(model)
  dataplane = DataPlane(model_registry=repository)
  app = build_app(dataplane, model, max_request_bytes)
  rest_socket = listening_socket(host, port)
  config = uvicorn.Config(app, log_config=None, access_log=False, lifespan='off',
                          timeout_graceful_shutdown=GRACE_S, loop='asyncio')
  rest = _Uvicorn(config)
  grpc = grpc_server(dataplane, host, grpc_port, max_request_bytes)
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


def run(args) -> None:
  """Loads the model, warms it up, serves (``serve``): the command behind ``__main__``."""
  segmenter = cli.load_segmenter(args, cli.inference_spec(args), root=None)
  # JAX compiles a program per batch shape: batches run padded to few shapes (batching.py).
  pad = segmenter.backend.name == 'jax'
  batch_limit = None
  if args.warmup:
    batch_limit, rates = fastest_batch(segmenter.batch, args.warmup, args.max_batch_size)
    print(f'warm-up at {", ".join(format_size(size) for size in args.warmup)}: '
          + ', '.join(f'{rate:.2f}' for rate in rates.values())
          + f' images/s in batches of {", ".join(map(str, rates))}: requests pool into '
          f'batches of up to {batch_limit}', file=sys.stderr, flush=True)
  batcher = Batcher(segmenter.batch, max_batch_size=args.max_batch_size,
                    max_delay=args.max_batch_delay_ms / 1000, max_queue=args.max_queue, pad=pad,
                    on_batch=metrics.record_batch, batch_limit=batch_limit)
  model = SegmentationModel(args.model_name, segmenter, batcher,
                            Limits(args.max_batch_size, args.max_pixels))
  ready_line = (f'serving {args.model_name} ({network_name(segmenter)}, '
                f'{segmenter.backend.description}) on http://{args.host}:{args.port}, '
                f'gRPC {args.host}:{args.grpc_port}')
  asyncio.run(serve(model, host=args.host, port=args.port, grpc_port=args.grpc_port,
                    max_request_bytes=args.max_request_bytes, ready_line=ready_line))
