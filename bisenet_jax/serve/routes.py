"""The REST routes: kserve's Open Inference Protocol routes, this server's own before them,
the page, and the status of each refusal.

kserve provides ``register_v2_endpoints`` (health, model list and readiness routes). Routes of
this server come before its router and take precedence over its own: GET /v2/models/{name} adds
``parameters`` to kserve's metadata (classes, palette: the page's legend), POST
/v2/models/{name}/infer reads the body and writes the answer itself (``protocol``), the
repository extension's routes and versioned inference are a one-line 501 (kserve's answer is a
500 with a traceback in the log), and GET / serves the page. Every refusal is
``{"error": "<one line>"}``, no such route (404) and a wrong method (405) included.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import fastapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import metrics_handler
from kserve.protocol.rest.v2_endpoints import register_v2_endpoints

from bisenet_jax.serve import faults, protocol
from bisenet_jax.serve.gate import RequestGate
from bisenet_jax.serve.model import SegmentationModel
from bisenet_jax.serve.spec import Limits

STATIC = Path(__file__).resolve().parent / 'static'
# Bodies and answers bigger than this are read and written on a worker thread.
OFF_THE_LOOP_BYTES = 1 << 16


async def _error_handler(_, error: Exception) -> JSONResponse:
  """{"error": "<one line>"}, as kserve answers its errors. An unforeseen error (500) is also
  logged with its traceback, once, by uvicorn (Starlette raises it again after this answer)."""
  return JSONResponse({'error': faults.one_line(error)}, status_code=faults.status(error)[0])


async def _http_error_handler(_, error: StarletteHTTPException) -> JSONResponse:
  """Routing's own refusals (no such route 404, wrong method 405) in the same one-line form."""
  return JSONResponse({'error': f'{error.detail}: see the routes in docs/serving.md'},
                      status_code=error.status_code, headers=error.headers)


async def _off_the_loop(size: int, function, *args):
  """``function(*args)`` on a worker thread when it handles over ``OFF_THE_LOOP_BYTES``, so the
  event loop that serves every connection (health probes included) goes on meanwhile; small
  bodies and answers are cheaper to handle in place than to hand over."""
  if size > OFF_THE_LOOP_BYTES:
    return await asyncio.to_thread(function, *args)
  return function(*args)


def build_app(dataplane: DataPlane, model: SegmentationModel, limits: Limits):
  app = fastapi.FastAPI(title='bisenet-jax', docs_url=None, redoc_url=None)

  @app.get('/v2/models/{model_name}')
  async def model_metadata(model_name: str):
    metadata = await dataplane.model_metadata(model_name)
    return {**metadata, 'parameters': model.parameters()}

  @app.post('/v2/models/{model_name}/infer')
  async def infer(model_name: str, request: fastapi.Request):
    headers = dict(request.headers)
    length = protocol.header_length(headers.get(protocol.HEADER_LENGTH), limits.max_json_bytes)
    body = await request.body()
    infer_request = await _off_the_loop(len(body), protocol.read_request, body, length,
                                        model_name, limits.max_json_bytes)
    response, _ = await dataplane.infer(model_name, infer_request, headers)
    size = sum(len(output._raw_data) for output in response.outputs)
    answer, response_headers = await _off_the_loop(size, protocol.encode_answer, response,
                                                   infer_request)
    return Response(answer, headers=response_headers)

  @app.post('/v2/models/{model_name}/versions/{version}/infer')
  async def versioned_infer(model_name: str, version: str):
    raise NotImplementedError(faults.NO_VERSIONS)

  @app.post('/v2/repository/index')
  @app.post('/v2/repository/models/{model_name}/load')
  @app.post('/v2/repository/models/{model_name}/unload')
  async def repository(model_name: str = ''):
    raise NotImplementedError(faults.NO_REPOSITORY)

  @app.get('/')
  async def page():
    if not (STATIC / 'index.html').is_file():
      return JSONResponse({'error': 'this installation has no page'}, status_code=404)
    return FileResponse(STATIC / 'index.html')

  app.mount('/static', StaticFiles(directory=STATIC, check_dir=False), name='static')
  app.add_api_route('/metrics', metrics_handler, methods=['GET'])
  register_v2_endpoints(app, dataplane, None)
  for kind in (Exception, *faults.REFUSALS):
    app.add_exception_handler(kind, _error_handler)
  app.add_exception_handler(StarletteHTTPException, _http_error_handler)
  app.add_middleware(RequestGate, limits=limits, refuse_early=model.refuse_early)
  return app
