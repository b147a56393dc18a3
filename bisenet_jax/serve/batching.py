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
* With ``sizes``, only images of those (H, W) are taken (``UnservedSize`` for any other): a JAX
  model compiles a program per image size and batch size, on the worker every request waits
  for (Fast-SCNN and the R18: 1.4 to 4.3 s and 6 to 33 MB each on two cores), so a server on
  JAX serves the sizes it compiled before it was ready (--warmup) and no other.
* ``batch_limit`` (default ``max_batch_size``) caps the images that requests pool into one
  batch; a request of more images still runs whole. ``fastest_batch`` finds the batch size of
  most images per second at warm-up: on a CPU bigger batches can be slower per image (the
  JAX R18 runs fewer images per second in batches of 8 than of 1 or 2 on two cores), and a
  server that pooled up to the maximum would then serve fewer images than it could.

The interface a server uses, and what each outcome means for its client:

* ``admit(count, size=None)``: the cheap check before a request's body is decoded. It returns
  when ``count`` images of ``size`` (H, W) would be taken now; else it raises ``Stopped`` or
  ``Closed`` (the server cannot serve: 503), ``NeverFits`` (never, at this configuration: its
  ``flag`` names the limit, --max-batch-size (400) or --max-queue (413)), ``UnservedSize`` (this
  size is not served, --warmup: 400) or ``QueueFull`` (not now: 503, retry later).
* ``submit(images, deadline=None)`` checks the same again (other requests may have come in
  between) and queues the images; its future gives a ``Result``, or raises
  ``DeadlineExceeded`` (``deadline``, a ``clock()`` time, passed while the request waited; it
  was never run: 504), ``Stopped`` (the worker stopped while it waited: 503) or the exception
  of its forward pass (500). A request whose forward pass has started is answered, whatever
  its deadline.
* ``future.cancel()`` (its client went away) takes a waiting request out of the queue at once:
  it is never run. A running one cannot be cancelled.
* ``alive`` is False once the worker has stopped (after ``close``, or an error it could not
  answer as a failed batch): the server is then not ready.
* ``clock`` (default ``time.monotonic``) times arrivals, delays and deadlines; ``tick()`` makes
  the batcher read it again at once (a test that moves its own clock calls it).

No JAX, no kserve here: ``run`` is any function uint8 [n, H, W, 3] -> uint8 [n, H, W].
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Collection, Sequence

import numpy as np

Size = tuple[int, int]
_log = logging.getLogger(__name__)


class QueueFull(Exception):
  """The waiting room has no place for the request now: refused at once (HTTP 503, retry)."""


class NeverFits(Exception):
  """The request has more images than this server ever takes at once (HTTP 413, or 400 for
  --max-batch-size); ``flag`` names the limit."""

  def __init__(self, message: str, flag: str):
    super().__init__(message)
    self.flag = flag


class UnservedSize(Exception):
  """The server does not serve images of this size (HTTP 400): its model was compiled for the
  --warmup sizes only."""


class Closed(Exception):
  """The batcher stopped taking requests (the server is shutting down: HTTP 503)."""


class Stopped(Closed):
  """The worker stopped on an error it could not answer as a failed batch: nothing will run
  (HTTP 503; the server is not ready)."""


class DeadlineExceeded(Exception):
  """The request's deadline passed while it waited; it was not run (HTTP 504)."""


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
  deadline: float | None

  @property
  def size(self) -> Size:
    return self.images.shape[1:3]


def padded_size(count: int, max_batch_size: int) -> int:
  """The rows a batch of ``count`` images runs as: the next power of two, at most the maximum."""
  return min(1 << (count - 1).bit_length(), max_batch_size)


def batch_sizes(max_batch_size: int) -> list[int]:
  """Every row count ``padded_size`` gives, e.g. [1, 2, 4, 8] for 8, [1, 2, 4, 6] for 6."""
  return sorted({padded_size(n, max_batch_size) for n in range(1, max_batch_size + 1)})


def time_batches(run: Callable[[np.ndarray], object], frames: Sequence[np.ndarray],
                 rows: Sequence[int], repeats: int = 3, warmup: int = 1,
                 timer: Callable[[], float] = time.perf_counter) -> dict[int, list[float]]:
  """``{rows: [seconds of each round]}``: how long ``run`` takes on batches of each row count.

  Args:
    run: the model, called on uint8 [rows, H, W, 3] images (blocking until its answer).
    frames: uint8 [k, H, W, 3] images of each size to time, taken in turn to fill the rows.
    rows: the batch sizes.
    repeats: timed rounds; a round's seconds for a row count are the sum over ``frames``.
    warmup: untimed calls of each shape first (a JAX compile).
    timer: seconds, read before and after each call.

  The rounds are interleaved (every shape in turn, ``repeats`` times): a machine that slows
  down or speeds up midway (other work on shared cores) slows every batch size alike instead of
  the last ones.
  """
  inputs = {(count, index): np.resize(images, (count, *images.shape[1:]))
            for count in rows for index, images in enumerate(frames)}
  for _ in range(warmup):
    for images in inputs.values():
      run(images)
  times = {count: [] for count in rows}
  for _ in range(repeats):
    round_seconds = dict.fromkeys(rows, 0.0)
    for (count, _), images in inputs.items():
      start = timer()
      run(images)
      round_seconds[count] += timer() - start
    for count, seconds in round_seconds.items():
      times[count].append(seconds)
  return times


def images_per_second(times: dict[int, list[float]], sizes: int = 1) -> dict[int, float]:
  """``{rows: images per second}`` of ``time_batches``'s fastest round on ``sizes`` sizes."""
  return {count: count * sizes / min(seconds) for count, seconds in times.items()}


def fastest_rows(rates: dict[int, float], tolerance: float = 0.02) -> int:
  """The row count of most images per second, the smaller one within ``tolerance`` of it (less
  waiting for other requests)."""
  best = max(rates.values())
  return min(count for count, rate in rates.items() if rate >= (1 - tolerance) * best)


def fastest_batch(run: Callable[[np.ndarray], np.ndarray], sizes: Collection[Size],
                  max_batch_size: int, repeats: int = 3,
                  timer: Callable[[], float] = time.perf_counter) -> tuple[int, dict[int, float]]:
  """``(rows, {rows: images per second})`` of each of ``batch_sizes(max_batch_size)`` on zero
  images of each (height, width) of ``sizes`` (``time_batches``), and the fastest rows
  (``fastest_rows``)."""
  frames = [np.zeros((1, *size, 3), np.uint8) for size in sizes]
  times = time_batches(run, frames, batch_sizes(max_batch_size), repeats, timer=timer)
  rates = images_per_second(times, len(frames))
  return fastest_rows(rates), rates


def _format_size(size: Size) -> str:
  return f'{size[0]}x{size[1]}'


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
    sizes: the (height, width) of the images served; None: any.
    clock: seconds of arrivals, delays and deadlines (``time.monotonic``; a test moves its own
      and calls ``tick``).
  """

  def __init__(self, run: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
               max_delay: float, max_queue: int, pad: bool = False,
               on_batch: Callable[[int, float, bool], None] | None = None,
               batch_limit: int | None = None, sizes: Collection[Size] | None = None,
               clock: Callable[[], float] = time.monotonic):
    self._run, self._pad, self._on_batch, self._clock = run, pad, on_batch, clock
    self.max_batch_size, self.max_delay, self.max_queue = max_batch_size, max_delay, max_queue
    self.batch_limit = min(batch_limit or max_batch_size, max_batch_size)
    self.sizes = None if sizes is None else frozenset(tuple(size) for size in sizes)
    self._jobs: collections.deque[_Job] = collections.deque()
    self._waiting = 0  # Images in self._jobs.
    self._closed = False
    self._stopped: str | None = None  # Why the worker stopped on an error.
    self._finished = False  # The worker has returned.
    self._condition = threading.Condition()
    self._worker = threading.Thread(target=self._work, name='batcher', daemon=True)
    self._reaper = threading.Thread(target=self._reap, name='batcher-deadlines', daemon=True)
    self._worker.start()
    self._reaper.start()

  @property
  def waiting(self) -> int:
    """Images waiting for a forward pass."""
    return self._waiting

  @property
  def alive(self) -> bool:
    """Whether requests are taken and run: False after ``close`` or once the worker stopped."""
    return not self._finished and not self._closed and self._worker.is_alive()

  def serves(self, size: Size) -> bool:
    """Whether images of ``size`` (height, width) are taken."""
    return self.sizes is None or tuple(size) in self.sizes

  def admit(self, count: int, size: Size | None = None) -> None:
    """Returns when ``count`` images of ``size`` would be queued now; raises what ``submit``
    would (module docstring), without queueing anything: call it before decoding a request.

    Raises:
      Stopped, Closed: the batcher takes no requests.
      NeverFits: ``count`` is over ``max_batch_size`` or ``max_queue``.
      UnservedSize: ``size`` is not among ``sizes``.
      QueueFull: the waiting images plus ``count`` would exceed ``max_queue``.
    """
    with self._condition:
      self._check(count, size)

  def submit(self, images: np.ndarray, deadline: float | None = None) -> Future:
    """Queues uint8 [N, H, W, 3] images; the future gives their ``Result``.

    Args:
      images: one request's images, of one size.
      deadline: the ``clock()`` time after which the request is not run if it still waits (its
        future then raises ``DeadlineExceeded``); None: it waits as long as it takes.

    Raises:
      ValueError: N is 0.
      DeadlineExceeded: ``deadline`` has passed already.
      what ``admit`` raises.
    """
    if not len(images):
      raise ValueError('a request holds at least one image')
    now = self._clock()
    if deadline is not None and deadline <= now:
      raise DeadlineExceeded("the request's deadline passed before it was queued: retry with a "
                             'later one')
    job = _Job(images, Future(), now, deadline)
    with self._condition:
      self._check(len(images), job.size)
      self._jobs.append(job)
      self._waiting += len(images)
      self._condition.notify_all()
    job.future.add_done_callback(lambda future: self._forget(job))
    return job.future

  def tick(self) -> int:
    """Reads the clock again: the waiting requests past their deadline fail (their count is
    returned), a batch past its delay goes. The batcher does so itself as time passes; a test
    that moves its own clock calls this."""
    with self._condition:
      expired = self._pop_expired()
      self._condition.notify_all()
    _fail(expired, _deadline_exceeded)
    return len(expired)

  def close(self, timeout: float | None = None) -> None:
    """Refuses new requests, answers every waiting one, then stops the worker."""
    with self._condition:
      self._closed = True
      self._condition.notify_all()
    self._worker.join(timeout)

  # -------------------------------------------------------------------------------------------
  # Under the lock.

  def _check(self, count: int, size: Size | None) -> None:
    if self._stopped is not None:
      raise _stopped(self._stopped)
    if self._closed:
      raise Closed('the server is shutting down')
    if count > self.max_batch_size:
      raise NeverFits(f"a request of {count} images is more than the server's --max-batch-size "
                      f'{self.max_batch_size}: send them in several requests', '--max-batch-size')
    if count > self.max_queue:
      raise NeverFits(f"a request of {count} images is more than the server's --max-queue "
                      f'{self.max_queue}: send at most {self.max_queue} per request',
                      '--max-queue')
    if size is not None and not self.serves(size):
      served = ', '.join(sorted(map(_format_size, self.sizes))) or 'none'
      raise UnservedSize(f'the server does not serve {_format_size(size)} images, only the '
                         f'sizes it compiled (--warmup {served}): send one of them')
    if self._waiting + count > self.max_queue:
      raise QueueFull(f'the server is busy ({self._waiting} images waiting, at most '
                      f'{self.max_queue}): retry later')

  def _remove(self, job: _Job) -> None:
    self._jobs.remove(job)
    self._waiting -= len(job.images)

  def _claim(self, job: _Job) -> bool:
    """Takes a waiting job out of the queue for the worker; False if its client cancelled it."""
    self._remove(job)
    return job.future.set_running_or_notify_cancel()

  def _pop_expired(self) -> list[_Job]:
    now = self._clock()
    return [job for job in list(self._jobs)
            if job.deadline is not None and job.deadline <= now and self._claim(job)]

  def _next_deadline(self) -> float | None:
    deadlines = [job.deadline for job in self._jobs if job.deadline is not None]
    return min(deadlines) if deadlines else None

  def _fitting_images(self, size: Size) -> int:
    return sum(len(job.images) for job in self._jobs if job.size == size)

  # -------------------------------------------------------------------------------------------
  # The worker and the deadlines' thread.

  def _forget(self, job: _Job) -> None:
    """A cancelled job leaves the queue at once (a claimed one is no longer in it)."""
    if job.future.cancelled():
      with self._condition:
        if job in self._jobs:
          self._remove(job)
          self._condition.notify_all()

  def _work(self) -> None:
    try:
      while True:
        expired, batch = self._next_batch()
        _fail(expired, _deadline_exceeded)
        if batch is None:
          return
        self._answer(batch)
    except BaseException as error:  # Not a failed batch (those are answered): a fault here.
      _log.critical('the batcher stopped: %s', _reason(error))
      with self._condition:
        self._stopped = _reason(error)
    finally:
      with self._condition:
        self._finished = True
        orphans = [job for job in list(self._jobs) if self._claim(job)]
        self._condition.notify_all()
      reason = self._stopped or 'closed'
      _fail(orphans, lambda: _stopped(reason))

  def _next_batch(self) -> tuple[list[_Job], list[_Job] | None]:
    """(expired jobs, the next batch): the oldest job and the later ones of its size that fit,
    once full or its delay is over (at once when closing, to drain). The batch is empty when
    the oldest left the queue meanwhile (cancelled, expired), None when closed and empty."""
    with self._condition:
      while not self._jobs:
        if self._closed:
          return [], None
        self._condition.wait()
      oldest = self._jobs[0]
      limit = max(self.batch_limit, len(oldest.images))  # A bigger request runs whole.
      fill_until = oldest.arrived + self.max_delay
      while not self._closed and oldest in self._jobs:
        remaining = fill_until - self._clock()
        if self._fitting_images(oldest.size) >= limit or remaining <= 0:
          break
        self._condition.wait(remaining)
      expired = self._pop_expired()
      if oldest not in self._jobs:
        return expired, []
      batch, count = [], 0
      for job in list(self._jobs):
        if job.size == oldest.size and count + len(job.images) <= limit:
          if self._claim(job):
            batch.append(job)
            count += len(job.images)
      return expired, batch

  def _answer(self, batch: list[_Job]) -> None:
    """Runs the batch and answers each of its futures: its labels, or the error (any error
    here, however deep: the worker goes on)."""
    if not batch:
      return
    count = sum(len(job.images) for job in batch)
    start = time.perf_counter()
    try:
      images = np.concatenate([job.images for job in batch])
      rows = padded_size(count, self.max_batch_size) if self._pad else count
      if rows > count:
        images = np.concatenate([images, np.repeat(images[-1:], rows - count, axis=0)])
      labels = self._run(images)[:count]
      seconds = self._report(count, start, failed=False)
      offset = 0
      for job in batch:
        n = len(job.images)
        job.future.set_result(Result(labels[offset:offset + n], seconds, count))
        offset += n
    except BaseException as error:  # These requests fail; the server goes on.
      # `error` is unbound after this block. A SystemExit and the like stop the worker below:
      # its batch is told so, as every waiting request will be.
      failure = error if isinstance(error, Exception) else _stopped(_reason(error))
      _fail([job for job in batch if not job.future.done()], lambda: failure)
      try:
        self._report(count, start, failed=True)
      except Exception:
        _log.exception('the batch metrics failed')
      if not isinstance(error, Exception):
        raise  # SystemExit and the like stop the worker (``_work``).

  def _report(self, count: int, start: float, failed: bool) -> float:
    seconds = time.perf_counter() - start
    if self._on_batch is not None:
      self._on_batch(count, seconds, failed)
    return seconds

  def _reap(self) -> None:
    """Fails each waiting request at its deadline, while the worker may be busy."""
    while True:
      with self._condition:
        if self._finished:
          return
        expired = self._pop_expired()
        if not expired:
          deadline = self._next_deadline()
          self._condition.wait(None if deadline is None else max(0.0, deadline - self._clock()))
          continue
      _fail(expired, _deadline_exceeded)


def _deadline_exceeded() -> DeadlineExceeded:
  return DeadlineExceeded('the request waited past its deadline for a forward pass: retry later '
                          'or with a longer deadline')


def _reason(error: BaseException) -> str:
  return f'{type(error).__name__}: {error}' if str(error) else type(error).__name__


def _stopped(reason: str) -> Stopped:
  return Stopped(f'the server stopped running its model ({reason}): retry once it is restarted')


def _fail(jobs: list[_Job], error: Callable[[], BaseException]) -> None:
  """Each job's future raises ``error()`` (a new exception each, or the batch's one)."""
  for job in jobs:
    job.future.set_exception(error())
