"""The status each refusal gets, HTTP and gRPC, and its one-line message; REST and gRPC answer
the same refusal alike."""

from __future__ import annotations

from grpc import StatusCode
from kserve import errors

from bisenet_jax.serve.batching import (Closed, DeadlineExceeded, NeverFits, QueueFull,
                                         UnservedSize)


# The Open Inference Protocol's repository extension and model versions: this server serves the
# one model it loaded at its start (HTTP 501, gRPC UNIMPLEMENTED).
NO_REPOSITORY = ('this server serves the one model it loaded at its start: the model repository '
                 'extension (index, load, unload) is not supported; start a server per model')
NO_VERSIONS = 'model versions are not supported: POST /v2/models/<name>/infer'


class TooLarge(Exception):
  """More bytes than a limit of the server allows (HTTP 413, gRPC RESOURCE_EXHAUSTED)."""


# (exception, HTTP status, gRPC status code), the first that matches wins.
STATUSES = ((errors.InvalidInput, 400, StatusCode.INVALID_ARGUMENT),
            (NeverFits, 400, StatusCode.INVALID_ARGUMENT),
            (UnservedSize, 400, StatusCode.INVALID_ARGUMENT),
            (errors.ModelNotFound, 404, StatusCode.NOT_FOUND),
            (TooLarge, 413, StatusCode.RESOURCE_EXHAUSTED),
            (QueueFull, 503, StatusCode.RESOURCE_EXHAUSTED),
            (Closed, 503, StatusCode.UNAVAILABLE),  # Stopped included.
            (DeadlineExceeded, 504, StatusCode.DEADLINE_EXCEEDED),
            (errors.ModelNotReady, 503, StatusCode.UNAVAILABLE),
            (errors.ServerNotReady, 503, StatusCode.UNAVAILABLE),
            (NotImplementedError, 501, StatusCode.UNIMPLEMENTED))
REFUSALS = tuple(kind for kind, _, _ in STATUSES)


def status(error: BaseException) -> tuple[int, StatusCode]:
  """The HTTP status and gRPC code of ``error``: 500 and INTERNAL for anything unforeseen."""
  for kind, http, grpc in STATUSES:
    if isinstance(error, kind):
      return http, grpc
  return 500, StatusCode.INTERNAL


def one_line(error: BaseException) -> str:
  """The error's message on one line (its class name when it has none)."""
  return ' '.join(str(error).split()) or type(error).__name__
