"""The gRPC side: kserve's ``InferenceServicer`` (its repository calls refused in one line)
behind an interceptor that gives each refusal its status code and each call its deadline, and
records the metrics of every ModelInfer call."""

from __future__ import annotations

import asyncio
import time

from grpc_interceptor.exceptions import GrpcException
from grpc_interceptor.exception_to_status import AsyncExceptionToStatusInterceptor
from kserve.logging import logger
from kserve.protocol.grpc.servicer import InferenceServicer

from bisenet_jax.serve import faults, metrics
from bisenet_jax.serve.model import ARRIVAL, DEADLINE


class Servicer(InferenceServicer):
  """kserve's servicer without a model repository: RepositoryModelLoad and
  RepositoryModelUnload are UNIMPLEMENTED in one line (kserve's were INTERNAL: it has no
  repository to call). RepositoryIndex is not in kserve's service: gRPC answers UNIMPLEMENTED."""

  async def RepositoryModelLoad(self, request, context):
    raise NotImplementedError(faults.NO_REPOSITORY)

  async def RepositoryModelUnload(self, request, context):
    raise NotImplementedError(faults.NO_REPOSITORY)


class StatusAndMetrics(AsyncExceptionToStatusInterceptor):
  """Errors to gRPC status codes (without kserve's log line per refused request), each call's
  deadline (``DEADLINE``: --request-timeout-s, or the client's if sooner), and the metrics of
  every ModelInfer call."""

  def __init__(self, request_timeout_s: float):
    super().__init__()
    self.request_timeout_s = request_timeout_s

  async def intercept(self, method, request_or_iterator, context, method_name):
    ARRIVAL.set(time.perf_counter())
    remaining = context.time_remaining()  # Until the client's deadline, None without one.
    seconds = self.request_timeout_s if remaining is None else min(self.request_timeout_s,
                                                                   remaining)
    DEADLINE.set(time.monotonic() + seconds)
    inference = method_name.endswith('/ModelInfer')
    try:
      response = await super().intercept(method, request_or_iterator, context, method_name)
    except asyncio.CancelledError:  # The client cancelled or left: its images left the queue.
      if inference:
        metrics.record_request('grpc', 499, time.perf_counter() - ARRIVAL.get())
      raise
    if inference:
      metrics.record_request('grpc', 200, time.perf_counter() - ARRIVAL.get())
    return response

  async def handle_exception(self, error, request_or_iterator, context, method_name):
    if isinstance(error, GrpcException):
      http, code = 500, error.status_code
    else:
      http, code = faults.status(error)
    if http == 500:
      logger.exception('inference failed', exc_info=error)
    if method_name.endswith('/ModelInfer'):
      metrics.record_request('grpc', http, time.perf_counter() - ARRIVAL.get())
    await context.abort(code, faults.one_line(error))
