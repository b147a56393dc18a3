"""The host side of evaluating a split, free of JAX: summing its batches' confusion matrices,
and ``evaluate_exported``, which scores an exported ``.onnx`` on ONNX Runtime.

``python -m bisenet_jax.evaluate --checkpoint model.onnx`` runs through here alone, so a machine
with NumPy, OpenCV and ONNX Runtime scores the file it ships; the sharded JAX evaluation
(``evaluator.evaluate``) sums its batches here too.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from bisenet_jax.data import pipeline
from bisenet_jax.eval import metrics

# A host batch -> (its valid rows' predicted labels, the batch's confusion matrix).
PredictAndCount = Callable[[dict], tuple[np.ndarray, np.ndarray]]


def evaluate_segmenter(segmenter, source, *, batch_size: int = 1, progress: bool = True,
                       on_batch: Callable[[dict, np.ndarray], None] | None = None) -> dict:
  """``evaluator.evaluate`` through a ``Segmenter`` (how an exported ``.onnx`` is evaluated,
  on ONNX Runtime), one batch of images of one size at a time.

  Each image goes to the segmenter as it was read; the segmenter applies the protocol the
  checkpoint path applies (``segmenter.test_resize``): the dataset's test resize to
  ``segmenter.resize_to`` with the pipeline's own function, the model (an exported file of fixed
  input size resizes to it and back itself), and the logits upsampled to the label's size. One
  process, on the host.
  """
  num_classes = segmenter.num_classes
  batches = pipeline.EvalBatches(source, batch_size=batch_size, resize_to=None)

  def predict_and_count(batch):
    predictions = segmenter.batch(batch['image'])
    counts = metrics.host_confusion_matrix(predictions, batch['label'], num_classes,
                                           valid=batch['valid'])
    return predictions[batch['valid']], counts

  return accumulate(batches, predict_and_count, num_classes, len(source), progress=progress,
                    on_batch=on_batch)


def accumulate(batches: Iterable[dict], predict_and_count: PredictAndCount, num_classes: int,
               images: int, *, progress: bool, on_batch, process_index: int = 0,
               process_count: int = 1) -> dict:
  """Sums the batches' confusion matrices (int64, on the host) and times the split.

  Returns ``metrics.segmentation_scores`` of the total plus ``confusion`` (int64 [K, K]),
  ``images`` (``images``, the split's size) and ``seconds``. In a run of ``process_count``
  processes each sees its own share of the batches; process ``process_index`` 0 shows the bar.
  """
  total = np.zeros((num_classes, num_classes), np.int64)
  start, seen = time.perf_counter(), 0
  bar = tqdm(batches, unit='batch', desc='eval', leave=False,
             disable=not progress or process_index != 0)
  for batch in bar:
    predictions, counts = predict_and_count(batch)
    total += np.asarray(counts, np.int64)
    seen += int(batch['valid'].sum()) * process_count
    bar.set_postfix_str(f'{seen / (time.perf_counter() - start):.2f} img/s')
    if on_batch is not None:
      on_batch(batch, predictions)
  return {**metrics.segmentation_scores(total), 'confusion': total, 'images': images,
          'seconds': time.perf_counter() - start}
