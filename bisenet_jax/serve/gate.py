"""The gate every REST inference request passes before the routes: the request body's size
limit, and the metrics of every answer."""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse

from bisenet_jax.serve import metrics
from bisenet_jax.serve.faults import one_line
from bisenet_jax.serve.model import ARRIVAL


def error_response(error: BaseException, status: int) -> JSONResponse:
  """{"error": "<one line>"}, as kserve answers its errors."""
  return JSONResponse({'error': one_line(error)}, status_code=status)


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
        response = error_response(
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
