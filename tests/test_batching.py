"""Tests of the server's dynamic batching (``bisenet_jax.serve.batching``) with fake models.

Nothing here depends on how fast this machine is: the batcher's clock is a ``FakeClock`` the
tests move (then ``tick``), models that must be busy block on a ``Gate`` until released, and
``fastest_batch`` reads a fake timer. A ``result(timeout)`` only bounds a hang.
"""

import threading
import time

import numpy as np
import pytest

from bisenet_jax.serve.batching import (Batcher, Closed, DeadlineExceeded, NeverFits, QueueFull,
                                        Stopped, UnservedSize, batch_sizes, fastest_batch,
                                        padded_size, time_batches)

SIZES = ((64, 128), (48, 96))
HANG_S = 30  # Only a hang gets near this.


class FakeClock:
  """The batcher's clock: still until ``advance``."""

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now

  def advance(self, seconds):
    self.now += seconds


class FakeModel:
  """labels = red channel; records each batch's shape and first labels."""

  def __init__(self):
    self.shapes, self.values = [], []

  def __call__(self, images):
    self.shapes.append(images.shape)
    self.values.extend(int(v) for v in images[:, 0, 0, 0])
    return images[..., 0].copy()


class Gate(FakeModel):
  """A model that blocks in each call until ``release``; ``entered`` is set once it runs."""

  def __init__(self, error=None):
    super().__init__()
    self.entered, self.opened, self.error = threading.Event(), threading.Event(), error

  def __call__(self, images):
    self.entered.set()
    assert self.opened.wait(HANG_S)
    if self.error is not None:
      raise self.error
    return super().__call__(images)

  def release(self):
    self.opened.set()


def images_of(count, size, value):
  return np.full((count, *size, 3), value, np.uint8)


def batcher_of(model, clock=None, **options):
  settings = {'max_batch_size': 8, 'max_delay': 1.0, 'max_queue': 64, **options}
  return Batcher(model, clock=clock or FakeClock(), **settings)


def busy(max_batch_size=1, **options):
  """A batcher whose worker is running request 0 (blocked in its gated model)."""
  model, clock = Gate(), FakeClock()
  batcher = batcher_of(model, clock, max_batch_size=max_batch_size, max_delay=0.0, **options)
  running = batcher.submit(images_of(1, SIZES[0], 0))
  assert model.entered.wait(HANG_S)
  return batcher, model, clock, running


def test_padded_sizes_are_powers_of_two_up_to_the_maximum():
  assert [padded_size(n, 8) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
  assert batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(6) == [1, 2, 4, 6]
  assert batch_sizes(1) == [1]


def test_requests_of_one_size_share_a_batch_and_sizes_never_mix():
  model, clock = FakeModel(), FakeClock()
  batcher = batcher_of(model, clock)
  futures = [batcher.submit(images_of(n, SIZES[i % 2], i)) for i, n in enumerate((1, 2, 3, 2))]
  clock.advance(1.0)  # The delay is over: each size goes as one batch.
  batcher.tick()
  results = [future.result(HANG_S) for future in futures]
  batcher.close()
  assert model.shapes == [(4, *SIZES[0], 3), (4, *SIZES[1], 3)]
  for i, (result, n) in enumerate(zip(results, (1, 2, 3, 2))):
    assert result.labels.shape == (n, *SIZES[i % 2]) and (result.labels == i).all()
    assert result.batch_size == 4


def test_a_full_batch_goes_at_once_and_never_exceeds_the_maximum():
  model = FakeModel()
  batcher = batcher_of(model, max_batch_size=4, max_delay=10.0)  # The clock never moves.
  futures = [batcher.submit(images_of(n, SIZES[0], n)) for n in (3, 1, 2, 2)]
  for future in futures:
    future.result(HANG_S)
  batcher.close()
  assert [shape[0] for shape in model.shapes] == [4, 4]


def test_the_oldest_request_goes_first_with_every_request_of_its_size():
  model, clock = FakeModel(), FakeClock()
  batcher = batcher_of(model, clock)
  futures = [batcher.submit(images_of(1, SIZES[i % 2], i)) for i in range(6)]
  clock.advance(1.0)
  batcher.tick()
  for future in futures:
    future.result(HANG_S)
  batcher.close()
  assert model.values == [0, 2, 4, 1, 3, 5]


def test_a_full_queue_refuses_at_once_and_every_request_is_accounted_for():
  batcher, model, _, running = busy(max_queue=2)
  futures, refused = [running], 0
  for i in range(1, 10):
    try:
      futures.append(batcher.submit(images_of(1, SIZES[0], i)))
    except QueueFull as error:
      refused += 1
      assert str(error) == 'the server is busy (2 images waiting, at most 2): retry later'
  model.release()
  assert [future.result(HANG_S).labels[0, 0, 0] for future in futures] == [0, 1, 2]
  assert refused == 7
  batcher.close()


def test_padding_repeats_the_last_image_and_drops_its_results():
  model = FakeModel()
  batcher = batcher_of(model, max_delay=0.0, pad=True)
  result = batcher.submit(np.stack([images_of(1, SIZES[0], v)[0] for v in (5, 6, 7)]))
  result = result.result(HANG_S)
  batcher.close()
  assert model.shapes == [(4, *SIZES[0], 3)]
  assert result.labels.shape == (3, *SIZES[0]) and result.batch_size == 3
  assert [int(result.labels[i, 0, 0]) for i in range(3)] == [5, 6, 7]


def test_the_batch_limit_pools_fewer_images_but_a_bigger_request_runs_whole():
  model, clock = FakeModel(), FakeClock()
  batcher = batcher_of(model, clock, batch_limit=2)
  futures = [batcher.submit(images_of(n, SIZES[0], n)) for n in (1, 1, 1, 4)]
  clock.advance(1.0)
  batcher.tick()
  for future in futures:
    future.result(HANG_S)
  batcher.close()
  assert [shape[0] for shape in model.shapes] == [2, 1, 4]


class TimedModel:
  """A model whose calls take ``cost[rows]`` seconds of a fake timer, which it moves."""

  def __init__(self, cost):
    self.cost, self.now, self.calls = cost, 0.0, []

  def timer(self):
    return self.now

  def __call__(self, images):
    self.calls.append(images.shape)
    self.now += self.cost[len(images)]
    return images[..., 0]


def test_the_fastest_batch_is_the_one_of_most_images_per_second():
  """Batches of 2 cost little more than 1, and of 4 much more: 2 is fastest."""
  model = TimedModel({1: 0.02, 2: 0.022, 4: 0.2})
  rows, rates = fastest_batch(model, [SIZES[0]], max_batch_size=4, repeats=1, timer=model.timer)
  assert rows == 2 and rates == pytest.approx({1: 50.0, 2: 2 / 0.022, 4: 20.0})
  # Within 2 % of the best, the smaller batch wins (less waiting for others).
  model.cost.update({1: 0.02, 2: 0.0401})
  assert fastest_batch(model, [SIZES[0]], 4, repeats=1, timer=model.timer)[0] == 1


def test_batches_are_timed_in_interleaved_rounds_after_a_warmup():
  model = TimedModel({1: 1.0, 2: 3.0})
  frames = [np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1).repeat(3, -1),
            images_of(1, (2, 2), 9)]
  times = time_batches(model, frames, [1, 2], repeats=2, warmup=1, timer=model.timer)
  assert times == {1: [2.0, 2.0], 2: [6.0, 6.0]}  # Each round: both sizes.
  # Warm-up round, then two timed ones; each time every shape in turn.
  assert model.calls == [(1, 1, 1, 3), (1, 2, 2, 3), (2, 1, 1, 3), (2, 2, 2, 3)] * 3


def test_close_answers_every_waiting_request_then_refuses():
  batcher, model, _, running = busy()
  futures = [running] + [batcher.submit(images_of(1, SIZES[0], i)) for i in range(1, 5)]
  closing = threading.Thread(target=batcher.close)
  closing.start()
  model.release()
  closing.join(HANG_S)
  assert [future.result(0).labels[0, 0, 0] for future in futures] == [0, 1, 2, 3, 4]
  assert not batcher.alive
  with pytest.raises(Closed, match='shutting down'):
    batcher.submit(images_of(1, SIZES[0], 0))


# ---------------------------------------------------------------------------------------------
# Faults: each answered, none ends the worker unnoticed.


def test_an_error_outside_the_forward_pass_fails_its_batch_and_the_worker_goes_on(monkeypatch):
  """Out of memory while the batch is put together (not in the model): that batch fails, the
  next one runs."""
  concatenate = np.concatenate
  failures = iter([MemoryError()])

  def short_of_memory(*args, **kwargs):
    error = next(failures, None)
    if error is not None:
      raise error
    return concatenate(*args, **kwargs)

  monkeypatch.setattr(np, 'concatenate', short_of_memory)
  model = FakeModel()
  batcher = batcher_of(model, max_delay=0.0)
  with pytest.raises(MemoryError):
    batcher.submit(images_of(2, SIZES[0], 1)).result(HANG_S)
  assert batcher.submit(images_of(1, SIZES[0], 2)).result(HANG_S).labels[0, 0, 0] == 2
  assert batcher.alive and model.values == [2]
  batcher.close()


def test_an_error_of_the_model_fails_its_batch_only():
  batcher, model, _, running = busy()
  model.error = ValueError('bad weights')
  model.release()
  with pytest.raises(ValueError, match='bad weights'):
    running.result(HANG_S)
  model.error = None
  assert batcher.submit(images_of(1, SIZES[0], 3)).result(HANG_S).labels[0, 0, 0] == 3
  assert batcher.alive
  batcher.close()


class Fatal(BaseException):
  """Not an ``Exception``: as SystemExit from deep in a library."""


def test_a_worker_that_stops_fails_every_waiting_request_and_refuses_new_ones():
  batcher, model, _, running = busy()
  waiting = batcher.submit(images_of(1, SIZES[0], 1))
  assert batcher.alive
  model.error = Fatal('gone')
  model.release()
  for request in (running, waiting):  # The batch that stopped it, and the one waiting.
    with pytest.raises(Stopped, match='Fatal: gone'):
      request.result(HANG_S)
  assert not batcher.alive  # Turned False before the waiting requests were failed.
  for call in (lambda: batcher.submit(images_of(1, SIZES[0], 2)), lambda: batcher.admit(1)):
    with pytest.raises(Stopped, match='retry once it is restarted'):
      call()


def test_a_request_past_its_deadline_fails_while_it_waits_and_is_never_run():
  batcher, model, clock, running = busy()
  late = batcher.submit(images_of(1, SIZES[0], 1), deadline=clock() + 5)
  kept = batcher.submit(images_of(1, SIZES[0], 2), deadline=clock() + 60)
  clock.advance(10)
  batcher.tick()
  with pytest.raises(DeadlineExceeded, match='deadline'):
    late.result(HANG_S)  # While the worker is still busy.
  assert batcher.waiting == 1 and not kept.done()
  model.release()
  assert kept.result(HANG_S).labels[0, 0, 0] == 2
  assert running.result(HANG_S).labels[0, 0, 0] == 0
  assert model.values == [0, 2]
  batcher.close()


def test_a_running_request_is_answered_whatever_its_deadline():
  model, clock = Gate(), FakeClock()
  batcher = batcher_of(model, clock, max_delay=0.0)
  running = batcher.submit(images_of(1, SIZES[0], 7), deadline=clock() + 1)
  assert model.entered.wait(HANG_S)
  clock.advance(10)
  assert batcher.tick() == 0
  model.release()
  assert running.result(HANG_S).labels[0, 0, 0] == 7
  with pytest.raises(DeadlineExceeded, match='before it was queued'):
    batcher.submit(images_of(1, SIZES[0], 8), deadline=clock() - 1)
  batcher.close()


def test_deadlines_pass_on_the_real_clock_while_the_worker_is_busy():
  """No ``tick``: the batcher's own thread fails the request at its deadline."""
  model = Gate()
  batcher = Batcher(model, max_batch_size=1, max_delay=0.0, max_queue=8)
  running = batcher.submit(images_of(1, SIZES[0], 0))
  assert model.entered.wait(HANG_S)
  late = batcher.submit(images_of(1, SIZES[0], 1), deadline=time.monotonic() + 0.05)
  with pytest.raises(DeadlineExceeded):
    late.result(HANG_S)
  assert not running.done()
  model.release()
  running.result(HANG_S)
  batcher.close()


def test_a_cancelled_request_leaves_the_queue_at_once_and_is_never_run():
  batcher, model, _, running = busy(max_batch_size=4)
  gone = batcher.submit(images_of(2, SIZES[0], 1))
  kept = batcher.submit(images_of(1, SIZES[0], 2))
  assert batcher.waiting == 3
  assert gone.cancel()
  assert batcher.waiting == 1
  assert not running.cancel()  # Its forward pass has started: it is answered.
  model.release()
  assert kept.result(HANG_S).labels[0, 0, 0] == 2 and running.result(HANG_S)
  assert model.values == [0, 2]
  batcher.close()


def test_admission_refuses_before_anything_is_queued():
  batcher, model, _, running = busy(max_batch_size=4, max_queue=3)
  batcher.admit(3)
  assert batcher.waiting == 0
  with pytest.raises(NeverFits, match="--max-batch-size 4: send them in several") as error:
    batcher.admit(5)
  assert error.value.flag == '--max-batch-size'
  batcher.submit(images_of(2, SIZES[0], 1))
  with pytest.raises(QueueFull, match=r'busy \(2 images waiting, at most 3\)'):
    batcher.admit(2)
  batcher.admit(1)
  model.release()
  running.result(HANG_S)
  batcher.close()


def test_a_request_larger_than_the_queue_never_fits_even_when_idle():
  """Not 'busy (0 images waiting)': no retry would ever get it in."""
  batcher = batcher_of(FakeModel(), max_batch_size=8, max_queue=2)
  for call in (lambda: batcher.admit(3), lambda: batcher.submit(images_of(3, SIZES[0], 0))):
    with pytest.raises(NeverFits, match="--max-queue 2: send at most 2 per request") as error:
      call()
    assert error.value.flag == '--max-queue'
  batcher.close()


def test_only_the_sizes_served_are_taken():
  model = FakeModel()
  batcher = batcher_of(model, max_delay=0.0, sizes=[SIZES[0]])
  assert batcher.serves(SIZES[0]) and not batcher.serves(SIZES[1])
  batcher.admit(1, SIZES[0])
  batcher.admit(1)  # Size unknown yet: only the count is checked.
  for call in (lambda: batcher.admit(1, SIZES[1]),
               lambda: batcher.submit(images_of(1, SIZES[1], 0))):
    with pytest.raises(UnservedSize, match=r'48x96 images, only the sizes it compiled '
                                           r'\(--warmup 64x128\)'):
      call()
  assert batcher.submit(images_of(1, SIZES[0], 4)).result(HANG_S).labels[0, 0, 0] == 4
  assert model.shapes == [(1, *SIZES[0], 3)]
  batcher.close()
