"""The batcher as ``SegmentationModel`` uses it: ``admit(count, size)`` before anything is
decoded, ``submit(images, deadline)``, ``alive``, and a future whose ``cancel`` withdraws the
request. ``admitting`` gives these to a ``Batcher`` that has only ``submit(images)``, its
``waiting``, ``max_queue`` and ``max_batch_size``, and ``close``; a batcher that has them is used
as it is.

The adapter keeps the batcher's own rules and adds: a request of more images than the queue
holds can never fit (``NeverFits``, not ``QueueFull``); a request still waiting at its deadline
is withdrawn (``DeadlineExceeded``); a withdrawn request is never run (its images leave the
queue when the worker reaches them); once the worker has stopped, every request is refused
(``Stopped``).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, InvalidStateError

from bisenet_jax.serve.batching import DeadlineExceeded, NeverFits, QueueFull, Stopped

STOPPED = "the server's worker has stopped: no request can be answered, restart the server"


def admitting(batcher):
  """``batcher`` itself when it admits requests (``admit``), else ``AdmittingQueue(batcher)``."""
  return batcher if hasattr(batcher, 'admit') else AdmittingQueue(batcher)


class AdmittingQueue:
  """A ``Batcher`` with admission, deadlines and a liveness (module docstring)."""

  def __init__(self, batcher):
    self._batcher = batcher

  @property
  def waiting(self) -> int:
    return self._batcher.waiting

  @property
  def max_queue(self) -> int:
    return self._batcher.max_queue

  @property
  def max_batch_size(self) -> int:
    return self._batcher.max_batch_size

  @property
  def alive(self) -> bool:
    """Whether the worker thread still runs forward passes."""
    return self._batcher._worker.is_alive()

  def admit(self, count: int, size: tuple[int, int]) -> None:
    """Refuses, before anything is decoded, ``count`` images of ``size`` that cannot be queued.

    Raises:
      Stopped: the worker has stopped.
      NeverFits: more images than a batch or the queue holds.
      QueueFull: not now: too many images wait.
    """
    del size  # Any size runs (a JAX model compiles a new one on its first batch).
    if not self.alive:
      raise Stopped(STOPPED)
    if count > self.max_batch_size:
      raise NeverFits(f"{count} images are more than the server's --max-batch-size "
                      f'{self.max_batch_size}: send them in several requests')
    if count > self.max_queue:
      raise NeverFits(f"{count} images are more than the server's --max-queue "
                      f'{self.max_queue} holds: send them in several requests')
    if self.waiting + count > self.max_queue:
      raise QueueFull(f'the server is busy ({self.waiting} images waiting, at most '
                      f'{self.max_queue}): retry later')

  def submit(self, images, deadline: float | None = None) -> Future:
    """Queues the images; the future gives their ``Result``, or ``DeadlineExceeded`` once
    ``deadline`` (``time.monotonic()``) passes while they wait. Called on the event loop (the
    deadline is its timer)."""
    if not self.alive:
      raise Stopped(STOPPED)
    job = self._batcher.submit(images)
    answer = Future()
    job.add_done_callback(lambda done: _copy(done, answer))
    answer.add_done_callback(lambda done: done.cancelled() and job.cancel())
    if deadline is not None:
      asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()),
                                            self._expire, job, answer)
    return answer

  def _expire(self, job: Future, answer: Future) -> None:
    if job.cancel():  # Still waiting: the worker will skip it.
      _settle(answer, DeadlineExceeded('the request was still waiting for its forward pass at '
                                       'its deadline: the server is busy, retry later'))
    elif not job.done() and not self.alive:
      _settle(answer, Stopped(STOPPED))

  def close(self, timeout: float | None = None) -> None:
    self._batcher.close(timeout)


def _copy(job: Future, answer: Future) -> None:
  if job.cancelled():  # Withdrawn: the answer was cancelled or has its deadline's error.
    return
  error = job.exception()
  try:
    if error is None:
      answer.set_result(job.result())
    else:
      answer.set_exception(error)
  except InvalidStateError:  # The answer was cancelled meanwhile.
    pass


def _settle(answer: Future, error: Exception) -> None:
  try:
    answer.set_exception(error)
  except InvalidStateError:
    pass
