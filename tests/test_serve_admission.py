"""The model's side of the batcher: admission before any decoding, the request's deadline, a
cancelled request withdrawn, readiness from the worker's liveness; against a fake batcher (the
order of the calls) and ``queue_adapter`` around the real ``Batcher``.

The model is tested in a process of its own: kserve's protocol buffers and tritonclient.grpc's
(tests/test_serve.py) cannot share one.
"""

import asyncio
import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from bisenet_jax.serve.batching import (Batcher, DeadlineExceeded, NeverFits, QueueFull,
                                         Stopped)
from bisenet_jax.serve.queue_adapter import AdmittingQueue, admitting

from conftest import ROOT


class SlowModel:
  def __init__(self, seconds=0.3):
    self.seconds, self.runs = seconds, []

  def __call__(self, images):
    self.runs.append(int(images[0, 0, 0, 0]))
    if images[0, 0, 0, 0] == 255:
      raise SystemExit  # Ends the worker thread, as any uncaught BaseException would.
    time.sleep(self.seconds)
    return images[..., 0].copy()


def images(value=0, count=1, width=2):
  return np.full((count, 2, width, 3), value, np.uint8)


def queue(model, **options):
  return AdmittingQueue(Batcher(model, **{'max_batch_size': 2, 'max_delay': 0.0,
                                          'max_queue': 3, **options}))


def test_admission_tells_never_from_not_now():
  batcher = queue(SlowModel())
  with pytest.raises(NeverFits, match='--max-batch-size 2'):
    batcher.admit(3, (2, 2))
  wide = queue(SlowModel(), max_batch_size=8, max_queue=3)
  with pytest.raises(NeverFits, match='--max-queue 3'):
    wide.admit(4, (2, 2))
  # Of three sizes: they cannot share a batch. The first runs, two wait.
  futures = [wide.submit(images(value, width=value)) for value in (1, 2, 3)]
  time.sleep(0.05)
  with pytest.raises(QueueFull, match='retry later'):
    wide.admit(2, (2, 2))
  wide.admit(1, (2, 2))
  for future in futures:
    future.result(5)
  batcher.close()
  wide.close()


def test_a_request_still_waiting_at_its_deadline_is_withdrawn():
  async def scenario():
    model = SlowModel()
    batcher = queue(model, max_batch_size=1)
    first = batcher.submit(images(1), deadline=time.monotonic() + 5)
    late = batcher.submit(images(2), deadline=time.monotonic() + 0.1)
    with pytest.raises(DeadlineExceeded, match='at its deadline'):
      await asyncio.wrap_future(late)
    assert (await asyncio.wrap_future(first)).labels[0, 0, 0] == 1
    await asyncio.sleep(0.1)
    batcher.close()
    return model.runs

  assert asyncio.run(scenario()) == [1]


def test_a_cancelled_request_is_never_run():
  async def scenario():
    model = SlowModel()
    batcher = queue(model, max_batch_size=1)
    first = batcher.submit(images(1))
    waiting = asyncio.ensure_future(asyncio.wrap_future(batcher.submit(images(2))))
    await asyncio.sleep(0.05)
    waiting.cancel()  # What the handler's cancellation does when its client leaves.
    await asyncio.wrap_future(first)
    await asyncio.sleep(0.1)
    batcher.close()
    return model.runs

  assert asyncio.run(scenario()) == [1]


@pytest.mark.filterwarnings('ignore::pytest.PytestUnhandledThreadExceptionWarning')
def test_a_stopped_worker_refuses_everything_and_fails_what_it_held():
  async def scenario():
    batcher = queue(SlowModel())
    assert batcher.alive
    dying = batcher.submit(images(255), deadline=time.monotonic() + 0.3)
    with pytest.raises(Stopped, match='restart the server'):
      await asyncio.wrap_future(dying)
    assert not batcher.alive
    with pytest.raises(Stopped):
      batcher.admit(1, (2, 2))
    with pytest.raises(Stopped):
      batcher.submit(images(1))

  asyncio.run(scenario())


def test_a_batcher_that_admits_is_used_as_it_is():
  class Admitting:
    def admit(self, count, size):
      pass

  batcher = Admitting()
  assert admitting(batcher) is batcher
  plain = Batcher(SlowModel(), max_batch_size=1, max_delay=0.0, max_queue=1)
  assert isinstance(admitting(plain), AdmittingQueue)
  plain.close()


# The model against a fake batcher that records the calls it gets, in a process of its own.
MODEL_SCRIPT = textwrap.dedent('''
    import asyncio, json, sys, time
    from concurrent.futures import Future
    import cv2
    import numpy as np
    from kserve.protocol.infer_type import InferInput, InferRequest
    from bisenet_jax.serve import model as served
    from bisenet_jax.serve.batching import DeadlineExceeded, NeverFits, Result
    from bisenet_jax.serve.spec import Limits

    calls = []

    class FakeBatcher:
      alive, waiting, max_queue, refusal = True, 0, 4, None

      def admit(self, count, size):
        calls.append(['admit', count, list(size)])
        if self.refusal:
          raise self.refusal

      def submit(self, images, deadline=None):
        calls.append(['submit', list(images.shape), deadline])
        self.future = Future()
        return self.future

    decode = served.decode_images
    served.decode_images = lambda declared: calls.append(['decode']) or decode(declared)

    class Segmenter:
      palette = np.zeros((256, 3), np.uint8)

    def array_request(shape):
      tensor = InferInput('image', list(shape), 'UINT8', data=np.zeros(shape, np.uint8))
      return InferRequest('bisenet', [tensor])

    def files_request(size):
      png = cv2.imencode('.png', np.zeros((*size, 3), np.uint8))[1].tobytes()
      tensor = InferInput('image_bytes', [1], 'BYTES', data=[png])
      return InferRequest('bisenet', [tensor])

    async def main():
      batcher = FakeBatcher()
      model = served.SegmentationModel('bisenet', Segmenter(), batcher, Limits())
      report = {}
      served.DEADLINE.set(123.5)
      task = asyncio.ensure_future(model.predict(array_request((2, 5, 7, 3))))
      while not calls or calls[-1][0] != 'submit':
        await asyncio.sleep(0.01)
      batcher.future.set_result(Result(np.zeros((2, 5, 7), np.uint8), 0.01, 2))
      await task
      report['array'] = list(calls)
      calls.clear()
      task = asyncio.ensure_future(model.predict(files_request((6, 9))))
      while not calls or calls[-1][0] != 'submit':
        await asyncio.sleep(0.01)
      task.cancel()
      await asyncio.gather(task, return_exceptions=True)
      report['files'] = list(calls)
      report['cancelled'] = batcher.future.cancelled()
      calls.clear()
      batcher.refusal = NeverFits('never')
      try:
        await model.predict(array_request((1, 3, 3, 3)))
      except NeverFits:
        report['never'] = list(calls)
      batcher.refusal = None
      calls.clear()
      task = asyncio.ensure_future(model.predict(array_request((1, 3, 3, 3))))
      while not calls or calls[-1][0] != 'submit':
        await asyncio.sleep(0.01)
      batcher.future.set_exception(DeadlineExceeded('late'))
      report['deadline'] = type((await asyncio.gather(task, return_exceptions=True))[0]).__name__
      report['ready'] = model.ready
      batcher.alive = False
      report['ready_when_stopped'] = model.ready
      try:
        model.refuse_early()
      except Exception as error:
        report['early'] = type(error).__name__
      batcher.alive, batcher.waiting = True, 4
      try:
        model.refuse_early()
      except Exception as error:
        report['early_full'] = type(error).__name__
      print(json.dumps(report))

    asyncio.run(main())
''')


def test_the_model_admits_before_decoding_and_hands_on_deadline_and_cancel():
  result = subprocess.run([sys.executable, '-c', MODEL_SCRIPT], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  assert report['array'] == [['admit', 2, [5, 7]], ['decode'], ['submit', [2, 5, 7, 3], 123.5]]
  assert report['files'] == [['admit', 1, [6, 9]], ['decode'], ['submit', [1, 6, 9, 3], 123.5]]
  assert report['cancelled'] is True
  assert report['never'] == [['admit', 1, [3, 3]]]  # Refused: nothing decoded.
  assert report['deadline'] == 'DeadlineExceeded'
  assert report['ready'] is True and report['ready_when_stopped'] is False
  assert report['early'] == 'Stopped' and report['early_full'] == 'QueueFull'
