"""The server's Prometheus metrics (GET /metrics), in prometheus_client's default registry beside
kserve's own (``request_predict_seconds`` and the like) and the process collectors.

  bisenet_requests_total{protocol, outcome}  inference requests ended, by outcome
  bisenet_request_seconds{protocol}          arrival to answer, inside the server
  bisenet_batch_errors_total                 forward passes that raised (their requests: 500)
  bisenet_batch_images                       images per forward pass (padding excluded)
  bisenet_compute_seconds                    seconds per forward pass
  bisenet_queue_images                       images waiting for a forward pass
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# outcome label values, from the status of the answer.
# 499: the client left before its answer (nginx's code; nothing is sent).
OUTCOMES = {200: 'ok', 400: 'bad_request', 404: 'not_found', 408: 'too_slow', 413: 'too_large',
            431: 'too_large', 499: 'client_left', 501: 'not_implemented', 503: 'busy_or_closing',
            504: 'deadline'}

REQUESTS = Counter('bisenet_requests_total', 'Inference requests answered, by protocol '
                   "('rest', 'grpc') and outcome (ok, bad_request, not_found, too_slow, "
                   'too_large, client_left, not_implemented, busy_or_closing, deadline, error)',
                   ['protocol', 'outcome'])
REQUEST_SECONDS = Histogram(
    'bisenet_request_seconds', 'Inference request latency, arrival to answer, in the server',
    ['protocol'], buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
BATCH_ERRORS = Counter('bisenet_batch_errors_total', 'Forward passes that raised')
BATCH_IMAGES = Histogram('bisenet_batch_images', 'Images per forward pass (padding excluded)',
                         buckets=(1, 2, 4, 8, 16, 32, 64, 128))
COMPUTE_SECONDS = Histogram('bisenet_compute_seconds', 'Seconds per forward pass',
                            buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
QUEUE_IMAGES = Gauge('bisenet_queue_images', 'Images waiting for a forward pass')


def record_request(protocol: str, status: int, seconds: float) -> None:
  """One answered inference request; ``status`` is its HTTP status (gRPC's mapped to one)."""
  REQUESTS.labels(protocol, OUTCOMES.get(status, 'error')).inc()
  REQUEST_SECONDS.labels(protocol).observe(seconds)


def record_batch(images: int, seconds: float, failed: bool) -> None:
  """One forward pass (``Batcher``'s ``on_batch``)."""
  if failed:
    BATCH_ERRORS.inc()
  BATCH_IMAGES.observe(images)
  COMPUTE_SECONDS.observe(seconds)
