"""The model's side of the batcher: admission before any decoding, the request's deadline, a
cancelled request withdrawn, readiness from the worker's liveness; against a fake batcher (the
order of the calls). tests/test_batching.py tests the real ``Batcher``'s side.

The model is tested in a process of its own: kserve's protocol buffers and tritonclient.grpc's
(tests/test_serve.py) cannot share one.
"""

import json
import subprocess
import sys
import textwrap


from conftest import ROOT


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
      batcher.refusal = NeverFits('never', '--max-queue')
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
