"""Dynamic batching: requests of one image size share a forward pass.

Handlers ``submit`` a request's uint8 [N, H, W, 3] images and await the future it returns; one
worker thread runs the model on up to ``max_batch_size`` images of ONE size at a time. The rule:

* The oldest waiting request always goes into the next batch, so no request starves, whatever
  sizes keep arriving. The batch takes its size (H, W); later requests of that size join it, in
  arrival order, while they fit under ``max_batch_size`` (a request's N images stay together:
  they are never split across forward passes). Requests of other sizes wait their turn.
* The worker waits at most ``max_delay`` after the oldest request arrived for the batch to fill,
  and not at all once it is full (with ``max_batch_size`` 1 batching is off).
* At most ``max_queue`` images wait (running ones not counted): a request that does not fit is
  refused at once with ``QueueFull``, never dropped later.
* With ``pad``, a batch of n images runs as ``padded_size(n)`` rows (the last image repeated,
  its results dropped): JAX compiles one program per batch shape, and powers of two bound them
  to log2(max_batch_size) + 2 per image size, which ``batch_sizes`` lists for a warm-up.
* ``batch_limit`` (default ``max_batch_size``) caps the images that requests pool into one
  batch; a request of more images still runs whole. ``fastest_batch`` finds the batch size of
  most images per second at warm-up: on a CPU bigger batches can be slower per image (the
  JAX R18 runs fewer images per second in batches of 8 than of 1 or 2 on two cores), and a
  server that pooled up to the maximum would then serve fewer images than it could.

No JAX, no kserve here: ``run`` is any function uint8 [n, H, W, 3] -> uint8 [n, H, W].
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from concurrent.futures import Future
from typing import Callable

import numpy as np


class QueueFull(Exception):
  """The request does not fit in the waiting room: refused at once (HTTP 503)."""


class Closed(Exception):
  """The batcher stopped taking requests (the server is shutting down)."""


class NeverFits(Exception):
  """The request can never be served as it is (more images than the batch or the queue holds,
  or an image size the server was not prepared for): refused before any work (HTTP 400)."""


class DeadlineExceeded(Exception):
  """The request was still waiting when its deadline passed: it is not run (HTTP 504)."""


class Stopped(Exception):
  """The worker stopped: no request can be answered any more (HTTP 503)."""


@dataclasses.dataclass(frozen=True)
class Result:
  """One request's answer: its labels, the forward pass's seconds and the batch's image count
  (padding excluded)."""
  labels: np.ndarray
  compute_s: float
  batch_size: int


@dataclasses.dataclass(eq=False)  # Identity: the deque removes this job, not an equal one.
class _Job:
  images: np.ndarray
  future: Future
  arrived: float

  @property
  def size(self) -> tuple[int, int]:
    return self.images.shape[1:3]


def padded_size(count: int, max_batch_size: int) -> int:
  """The rows a batch of ``count`` images runs as: the next power of two, at most the maximum."""
  return min(1 << (count - 1).bit_length(), max_batch_size)


def batch_sizes(max_batch_size: int) -> list[int]:
  """Every row count ``padded_size`` gives, e.g. [1, 2, 4, 8] for 8, [1, 2, 4, 6] for 6."""
  return sorted({padded_size(n, max_batch_size) for n in range(1, max_batch_size + 1)})


def fastest_batch(run: Callable[[np.ndarray], np.ndarray], sizes, max_batch_size: int,
                  repeats: int = 3) -> tuple[int, dict[int, float]]:
  """``(rows, {rows: images per second})`` of each of ``batch_sizes(max_batch_size)`` on zero
  images of each (height, width) of ``sizes``, and the fastest rows (the smaller on a tie
  within 2 %).

  Each shape runs once first (a JAX compile), then ``repeats`` rounds time every shape in turn
  and each keeps its fastest time: interleaved, a machine that slows down or speeds up midway
  (other work on shared cores) slows every batch size alike instead of the last ones.
  """
  shapes = [(rows, height, width) for rows in batch_sizes(max_batch_size)
            for height, width in sizes]
  inputs = {shape: np.zeros((*shape, 3), np.uint8) for shape in shapes}
  for images in inputs.values():
    run(images)
  fastest = dict.fromkeys(shapes, float('inf'))
  for _ in range(repeats):
    for shape, images in inputs.items():
      start = time.perf_counter()
      run(images)
      fastest[shape] = min(fastest[shape], time.perf_counter() - start)
  rates = {rows: rows * len(sizes) / sum(seconds for (r, *_), seconds in fastest.items()
                                         if r == rows)
           for rows in batch_sizes(max_batch_size)}
  best = max(rates.values())
  return min(rows for rows, rate in rates.items() if rate >= 0.98 * best), rates


class Batcher:
  """Groups submitted requests into forward passes on one worker thread (module docstring).

  Args:
    run: uint8 [n, H, W, 3] -> uint8 [n, H, W], called on the worker thread only.
    max_batch_size: the most images per forward pass (a request may not have more).
    max_delay: seconds a batch waits for more requests of its size after its oldest arrived.
    max_queue: the most images waiting.
    pad: run padded batches (``padded_size``), for backends that compile per batch shape.
    on_batch: called after each forward pass with its image count, seconds and whether it
      raised (metrics).
    batch_limit: the most images requests pool into one batch (default ``max_batch_size``).
  """

  def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
               max_delay: float, max_queue: int, pad: bool = False,
               on_batch: Callable[[int, float, bool], None] | None = None,
               batch_limit: int | None = None):
    self._run, self._pad, self._on_batch = run, pad, on_batch
    self.max_batch_size, self.max_delay, self.max_queue = max_batch_size, max_delay, max_queue
    self.batch_limit = min(batch_limit or max_batch_size, max_batch_size)
    self._jobs: collections.deque[_Job] = collections.deque()
    self._waiting = 0  # Images in self._jobs.
    self._closed = False
    self._condition = threading.Condition()
    self._worker = threading.Thread(target=self._work, name='batcher', daemon=True)
    self._worker.start()

  @property
  def waiting(self) -> int:
    """Images waiting for a forward pass."""
    return self._waiting

  def submit(self, images: np.ndarray) -> Future:
    """Queues uint8 [N, H, W, 3] images; the future gives their ``Result``.

    Raises:
      ValueError: N is 0 or above ``max_batch_size`` (callers validate first).
      QueueFull: the waiting images plus these would exceed ``max_queue``.
      Closed: after ``close``.
    """
    if not 1 <= len(images) <= self.max_batch_size:
      raise ValueError(f'a request holds 1 to {self.max_batch_size} images, not {len(images)}')
    job = _Job(images, Future(), time.monotonic())
    with self._condition:
      if self._closed:
        raise Closed('the server is shutting down')
      if self._waiting + len(images) > self.max_queue:
        raise QueueFull(f'the server is busy ({self._waiting} images waiting, at most '
                        f'{self.max_queue}): retry later')
      self._jobs.append(job)
      self._waiting += len(images)
      self._condition.notify()
    return job.future

  def close(self, timeout: float | None = None) -> None:
    """Refuses new requests, answers every waiting one, then stops the worker."""
    with self._condition:
      self._closed = True
      self._condition.notify()
    self._worker.join(timeout)

  def _work(self) -> None:
    while True:
      batch = self._next_batch()
      if batch is None:
        return
      self._answer(batch)

  def _next_batch(self) -> list[_Job] | None:
    """The oldest job and the later ones of its size that fit, once full or its delay is over
    (at once when closing, to drain); None when closed and nothing waits."""
    with self._condition:
      while not self._jobs:
        if self._closed:
          return None
        self._condition.wait()
      oldest = self._jobs[0]
      limit = max(self.batch_limit, len(oldest.images))  # A bigger request runs whole.
      deadline = oldest.arrived + self.max_delay
      while not self._closed:
        remaining = deadline - time.monotonic()
        if self._fitting_images(oldest.size) >= limit or remaining <= 0:
          break
        self._condition.wait(remaining)
      batch, count = [], 0
      for job in list(self._jobs):
        if job.size == oldest.size and count + len(job.images) <= limit:
          self._jobs.remove(job)
          self._waiting -= len(job.images)
          # A request whose client went away was cancelled: it is not run.
          if job.future.set_running_or_notify_cancel():
            batch.append(job)
            count += len(job.images)
      return batch

  def _fitting_images(self, size: tuple[int, int]) -> int:
    return sum(len(job.images) for job in self._jobs if job.size == size)

  def _answer(self, batch: list[_Job]) -> None:
    if not batch:
      return
    images = np.concatenate([job.images for job in batch])
    count = len(images)
    rows = padded_size(count, self.max_batch_size) if self._pad else count
    if rows > count:
      images = np.concatenate([images, np.repeat(images[-1:], rows - count, axis=0)])
    start = time.perf_counter()
    try:
      labels = self._run(images)[:count]
    except Exception as error:  # These requests fail; the server goes on.
      self._report(count, start, failed=True)
      for job in batch:
        job.future.set_exception(error)
      return
    seconds = self._report(count, start, failed=False)
    offset = 0
    for job in batch:
      n = len(job.images)
      job.future.set_result(Result(labels[offset:offset + n], seconds, count))
      offset += n

  def _report(self, count: int, start: float, failed: bool) -> float:
    seconds = time.perf_counter() - start
    if self._on_batch is not None:
      self._on_batch(count, seconds, failed)
    return seconds
