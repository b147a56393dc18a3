"""The gate of the REST server, in two layers, and the bounds it keeps (``Limits``):

* ``guarded_http``, the connection (uvicorn's httptools protocol): a request's headers must
  arrive whole within ``header_timeout_s`` of the connection's opening, or of the request's
  first byte on a kept-alive connection, and hold at most ``max_header_bytes`` (else 408 or
  431); an answer the client stops taking for ``body_timeout_s`` closes the connection. At most
  ``max_connections`` are open: a new one beyond them closes a connection whose headers are
  still awaited (503), or whose body arrives too slowly (``EVICTABLE_S``, ``MIN_RATE``), or is
  itself answered 503. A kept-alive connection idle for ``keep_alive_s`` is closed by uvicorn.
* ``RequestGate``, the request (ASGI middleware): an inference request is refused before its
  body is read while none could be queued (503: a full queue, a stopped worker); a body over
  its limit is a 413 before it is read (Content-Length) or as soon as it is counted (chunked); a
  body must arrive whole within ``body_timeout_s`` of the headers (else 408); the routes receive
  it whole, with the request's deadline (``request_timeout_s`` from its arrival); a client that
  disconnects before its answer cancels its handling (its images leave the queue); every
  inference answer is counted and timed (metrics) from its arrival.

Not uvicorn's own ``limit_concurrency``: it answers its 503 (text, "Service Unavailable") only
once a request's headers have arrived, so sockets that never finish their headers are never
refused, and they hold their places for good; nor ``timeout_keep_alive`` alone, which uvicorn
arms only after an answer, never while a request arrives.

Every refusal here is one line of JSON, ``{"error": "..."}``, as the routes answer theirs, and
none resets a connection under a client that is still sending: a connection refused before
its headers arrived lingers (``LINGER_S``), and a request refused before its body was read
keeps its connection while uvicorn reads the rest of the body and drops it (a body not whole
within ``body_timeout_s`` and a second closes the connection).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bisenet_jax.serve import metrics, protocol
from bisenet_jax.serve.faults import REFUSALS, TooLarge, one_line, status
from bisenet_jax.serve.model import ARRIVAL, DEADLINE
from bisenet_jax.serve.spec import Limits

# The most bytes of a body that a route other than inference reads (they take none).
OTHER_BODY_BYTES = 1 << 16
# A new connection beyond --max-connections closes one whose headers are still awaited, or whose
# body has been arriving for EVICTABLE_S seconds at under MIN_RATE bytes a second, the one
# waiting longest first: a client that sends its request at once, or its body as fast as a
# slow network goes, is not closed.
EVICTABLE_S = 1.0
MIN_RATE = 16 << 10
# Seconds a connection refused by the gate itself goes on reading (and dropping) what its client
# sends, so that the client reads the answer rather than a reset.
LINGER_S = 2.0
REASONS = {400: 'Bad Request', 408: 'Request Timeout', 413: 'Content Too Large',
           431: 'Request Header Fields Too Large', 503: 'Service Unavailable'}


def _error_body(message: str) -> bytes:
  return json.dumps({'error': message}).encode()


def guarded_http(limits: Limits) -> type:
  """uvicorn's httptools protocol keeping the connection's bounds of ``limits`` (module
  docstring); uvicorn makes one per connection (``uvicorn.Config(http=...)``)."""
  # The connections whose request has not arrived whole yet (headers or body), with when it
  # began, the one waiting longest first: over --max-connections, it makes room for a new one
  # once it has waited EVICTABLE_S.
  waiting: collections.OrderedDict = collections.OrderedDict()

  class GuardedHttp(HttpToolsProtocol):
    """One connection, its request timed and counted, its stalled answers cut off."""

    def connection_made(self, transport):
      super().connection_made(transport)
      self._timer = self._stall = None
      self._lingering = False
      self._expect_request()
      if len(self.connections) > limits.max_connections:
        slow = next((other for other in waiting if other is not self and other._is_slow()),
                    None)
        if slow is None:
          self._refuse(503, f'the server has its --max-connections {limits.max_connections} '
                       'connections busy: retry later')
        else:
          slow._refuse(503, f'the server has its --max-connections {limits.max_connections}'
                       ' connections open and closed this one, whose request was arriving too '
                       'slowly: send the whole request at once')

    def _expect_request(self):
      self._header_bytes, self._in_headers, self._received = 0, True, 0
      self._arm(limits.header_timeout_s, self._headers_too_slow)
      waiting[self] = self.loop.time()

    def _is_slow(self) -> bool:
      """Whether the request's headers are still awaited (a client sends them at once), or its
      body has been arriving for ``EVICTABLE_S`` at under ``MIN_RATE``."""
      elapsed = self.loop.time() - waiting.get(self, self.loop.time())
      return self._in_headers or (elapsed >= EVICTABLE_S and self._received < MIN_RATE * elapsed)

    def _arm(self, seconds: float, callback):
      self._cancel_timer()
      self._timer = self.loop.call_later(seconds, callback)

    def data_received(self, data):
      if self._lingering:  # Refused: what the client still sends is dropped.
        return
      if self._in_headers:
        self._header_bytes += len(data)
      self._received += len(data)
      super().data_received(data)
      if (self._in_headers and self._header_bytes > limits.max_header_bytes
          and not self.transport.is_closing()):
        self._refuse(431, f"the request's headers are over the server's --max-header-bytes "
                     f'{limits.max_header_bytes}: send fewer or shorter headers')

    def on_message_begin(self):
      super().on_message_begin()
      if self not in waiting:  # The next request on a kept-alive connection.
        self._expect_request()

    def on_headers_complete(self):
      self._in_headers = False
      # The gate answers a body that is late (408) at --body-timeout-s; this closes a
      # connection whose body nobody reads (its request was answered early) a second later.
      self._arm(limits.body_timeout_s + 1.0, self._close)
      super().on_headers_complete()

    def on_message_complete(self):
      self._cancel_timer()
      waiting.pop(self, None)
      super().on_message_complete()

    def _headers_too_slow(self):
      self._refuse(408, f"the request's headers took over the server's --header-timeout-s "
                   f'{limits.header_timeout_s:g} s: send the whole request at once')

    def _refuse(self, code: int, message: str):
      """Answers ``code`` while the request's headers are awaited, then lingers: what the
      client still sends is read and dropped until it closes, or for ``LINGER_S`` (closing at
      once would reset the connection, and the client could lose the answer). Once the headers
      have arrived, only closes (the gate sees the client leave, or has answered)."""
      if not self._in_headers or self.transport.is_closing():
        return self._close()
      body = _error_body(message)
      self.transport.write(
          f'HTTP/1.1 {code} {REASONS[code]}\r\ncontent-type: application/json\r\n'
          f'content-length: {len(body)}\r\nconnection: close\r\n\r\n'.encode() + body)
      self._lingering = True
      waiting.pop(self, None)
      self._arm(LINGER_S, self._close)
      if self.transport.can_write_eof():
        self.transport.write_eof()

    def eof_received(self):
      if self._lingering:
        self._close()
      return super().eof_received()

    def _close(self):
      self._cancel_timer()
      waiting.pop(self, None)
      if not self.transport.is_closing():
        self.transport.close()

    def pause_writing(self):
      super().pause_writing()
      if self._stall is None:
        self._stall = self.loop.call_later(limits.body_timeout_s, self._reader_too_slow)

    def resume_writing(self):
      super().resume_writing()
      if self._stall is not None:
        self._stall.cancel()
        self._stall = None

    def _reader_too_slow(self):
      self._stall = None
      self.transport.abort()  # The client takes nothing: what is buffered for it is dropped.

    def _cancel_timer(self):
      if self._timer is not None:
        self._timer.cancel()
        self._timer = None

    def connection_lost(self, exc):
      self._cancel_timer()
      waiting.pop(self, None)
      if self._stall is not None:
        self._stall.cancel()
        self._stall = None
      super().connection_lost(exc)

  return GuardedHttp


def _is_inference(scope) -> bool:
  return scope['method'] == 'POST' and scope['path'].endswith('/infer')


async def _send_error(send, code: int, message: str, close: bool = False) -> None:
  body = _error_body(message)
  headers = [(b'content-type', b'application/json'),
             (b'content-length', str(len(body)).encode())]
  if close:
    headers.append((b'connection', b'close'))
  await send({'type': 'http.response.start', 'status': code, 'headers': headers})
  await send({'type': 'http.response.body', 'body': body})


class _Refusal(Exception):
  """A request the gate answers itself: ``code`` and one line."""

  def __init__(self, code: int, message: str):
    super().__init__(message)
    self.code = code


class RequestGate:
  """ASGI middleware of every HTTP request (module docstring).

  Args:
    app: the routes.
    limits: the bounds of each request.
    refuse_early: raises the refusal of any inference request while none could be queued
      (``SegmentationModel.refuse_early``): its body is then not read.
  """

  def __init__(self, app, limits: Limits, refuse_early=lambda: None):
    self.app, self.limits, self.refuse_early = app, limits, refuse_early

  async def __call__(self, scope, receive, send):
    if scope['type'] != 'http':
      return await self.app(scope, receive, send)
    inference = _is_inference(scope)
    start = time.perf_counter()
    ARRIVAL.set(start)
    DEADLINE.set(time.monotonic() + self.limits.request_timeout_s)
    answered, finished = 500, False

    async def counted_send(message):
      nonlocal answered, finished
      if message['type'] == 'http.response.start':
        answered = message['status']
      elif not message.get('more_body'):
        finished = True
      await send(message)

    try:
      try:
        limit = (OTHER_BODY_BYTES, None)
        if inference:
          self.refuse_early()
          limit = self._body_limit(scope)
        async with asyncio.timeout(self.limits.body_timeout_s):
          body = await _read_body(receive, *limit)
      except TimeoutError:
        raise _Refusal(408, f'the request body took over the server\'s --body-timeout-s '
                       f'{self.limits.body_timeout_s:g} s: send it at once') from None
      except REFUSALS as error:  # A refusal before the whole body was read.
        raise _Refusal(status(error)[0], one_line(error)) from None
      if body is None:  # The client left before its body arrived: nobody to answer.
        answered = 499
        return
      if not inference:
        return await self.app(scope, _replay(body), counted_send)
      if not await _unless_client_leaves(self.app(scope, _replay(body), counted_send), receive,
                                         lambda: finished):
        answered = 499
    except _Refusal as refusal:
      # The rest of an unread body is read and dropped by uvicorn (closing now could reset the
      # connection before the client reads the answer); a late one is closed.
      await _send_error(counted_send, refusal.code, str(refusal), close=refusal.code == 408)
    finally:
      if inference:
        metrics.record_request('rest', answered, time.perf_counter() - start)

  def _body_limit(self, scope) -> tuple[int, str | None]:
    """(most bytes, the flag that sets them) of an inference body, or a refusal from its
    headers: Content-Length over the limit, a bad binary header length."""
    headers = dict(scope['headers'])
    length = headers.get(b'content-length', b'').strip()
    header = headers.get(protocol.HEADER_LENGTH.encode())
    json_length = protocol.header_length(header and header.decode('latin-1'),
                                         self.limits.max_json_bytes)
    limit, flag = self.limits.max_request_bytes, '--max-request-bytes'
    if json_length is None and self.limits.max_json_bytes < limit:
      limit, flag = self.limits.max_json_bytes, '--max-json-bytes'
    if length.isdigit() and int(length) > limit:
      raise TooLarge(_too_large(int(length), limit, flag))
    return limit, flag


def _too_large(size: int | None, limit: int, flag: str | None) -> str:
  what = 'the request body' if size is None else f'the request body of {size} bytes'
  if flag is None:
    return f'{what} is over {limit} bytes, the most this route reads: send no body'
  remedy = ('send the images as binary data or as image_bytes' if flag == '--max-json-bytes'
            else 'send smaller or fewer images')
  return f'{what} is over the server\'s {flag} {limit}: {remedy}'


async def _read_body(receive, limit: int, flag: str | None) -> bytes | None:
  """The whole body; None when the client disconnected first; ``TooLarge`` past ``limit``."""
  chunks, size = [], 0
  while True:
    message = await receive()
    if message['type'] == 'http.disconnect':
      return None
    chunks.append(message.get('body', b''))
    size += len(chunks[-1])
    if size > limit:
      raise TooLarge(_too_large(None, limit, flag))
    if not message.get('more_body'):
      return b''.join(chunks)


async def _unless_client_leaves(handling, receive, answered) -> bool:
  """Runs ``handling`` (the routes, the body read) unless the client disconnects before its
  answer is sent: then ``handling`` is cancelled (a request waiting for its batch is withdrawn
  from the queue) and the result is False."""
  task = asyncio.ensure_future(handling)
  watch = asyncio.ensure_future(_disconnect(receive))
  try:
    await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    if not task.done() and not answered():
      task.cancel()
      with contextlib.suppress(asyncio.CancelledError):
        await task
      return False
    await task
    return True
  finally:
    watch.cancel()
    if not task.done():  # The gate itself was cancelled (the server stopping).
      task.cancel()


async def _disconnect(receive) -> None:
  """Returns once the client has gone (or its answer is complete: uvicorn says so alike)."""
  while (await receive())['type'] != 'http.disconnect':
    pass


def _replay(body: bytes):
  sent = False

  async def receive():
    nonlocal sent
    if sent:
      await asyncio.Event().wait()  # Nothing more: as an open connection that sends nothing.
    sent = True
    return {'type': 'http.request', 'body': body, 'more_body': False}

  return receive
