"""The gRPC side: kserve's ``InferenceServicer`` behind an interceptor that gives each refusal
its status code and records the metrics of every ModelInfer call."""

from __future__ import annotations

import time

from grpc_interceptor.exceptions import GrpcException
from grpc_interceptor.exception_to_status import AsyncExceptionToStatusInterceptor
from kserve.logging import logger

from bisenet_jax.serve import faults, metrics
from bisenet_jax.serve.model import ARRIVAL


class StatusAndMetrics(AsyncExceptionToStatusInterceptor):
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
      http, code = faults.status(error)
    if http == 500:
      logger.exception('inference failed', exc_info=error)
    if method_name.endswith('/ModelInfer'):
      metrics.record_request('grpc', http, time.perf_counter() - ARRIVAL.get())
    await context.abort(code, faults.one_line(error))
