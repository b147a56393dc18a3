"""mIoU over a whole split, sharded over every device: the evaluator of training and ``evaluate``.

Each process reads its own share of the split (``pipeline.EvalBatches``: batches of one image
size, the same sizes in the same order in every process), batches are sharded over the mesh's
data axis, and each batch's confusion matrix is one global reduction; the host sums them in
int64. Rows added to fill a batch are masked, so every image counts exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from bisenet_jax import parallel
from bisenet_jax.data import pipeline
from bisenet_jax.data.normalization import normalize_on_device
from bisenet_jax.eval import inference, metrics


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
  """How logits are produced; the defaults are the reference protocol (REFERENCE.md §6)."""
  mode: str = 'whole'
  crop_size: tuple[int, int] | None = None
  stride: tuple[int, int] | None = None
  flip: bool = False
  scales: tuple[float, ...] = (1.0,)

  def describe(self) -> dict:
    return dataclasses.asdict(self)


def make_segment_fn(model, options: InferenceOptions, num_classes: int) -> Callable:
  """``(variables, uint8 RGB images, out_size) -> uint8 labels``: the jitted shared inference.

  Images arrive as uint8 [N, H, W, 3] RGB and are normalised on the device, as in training.
  """

  @functools.partial(jax.jit, static_argnames='out_size')
  def segment(variables, images, out_size):
    logits_fn = lambda x: model.apply(variables, x, train=False)
    return inference.predict_labels(logits_fn, normalize_on_device(images), out_size,
                                    mode=options.mode,
                                    crop_size=options.crop_size, stride=options.stride,
                                    flip=options.flip, scales=options.scales,
                                    num_classes=num_classes)

  return segment


def evaluate(model, variables, source, *, mesh, base_size: Sequence[int],
             options: InferenceOptions = InferenceOptions(), batch_per_device: int = 1,
             num_classes: int = 19, progress: bool = True,
             on_batch: Callable[[dict, np.ndarray], None] | None = None) -> dict:
  """Evaluates ``model`` on every sample of ``source``.

  Args:
    model: the Flax segmentor; ``variables`` its params and batch_stats (any placement).
    source: random-access samples ``{'image', 'label', 'name'}`` (e.g. ``CityscapesFolder``).
    mesh: the device mesh; the global batch is ``batch_per_device * mesh.size``.
    base_size: (width, height) of the test Resize (a no-op for 2048x1024 Cityscapes frames).
    options: whole/slide, flip, scales.
    on_batch: called with each host batch and its predicted labels (valid rows only), e.g. to
      write prediction files.

  Returns:
    ``metrics.segmentation_scores`` of the split plus ``confusion`` (int64 [K, K]),
    ``images`` (count) and ``seconds``.
  """
  segment = make_segment_fn(model, options, num_classes)
  count_fn = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=num_classes))
  variables = jax.device_put(variables, parallel.replicated(mesh))
  local_batch = batch_per_device * len(mesh.local_devices)
  total = np.zeros((num_classes, num_classes), np.int64)
  start, seen = time.perf_counter(), 0
  batches = pipeline.EvalBatches(source, batch_size=local_batch, base_size=base_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  bar = tqdm(batches, unit='batch', desc='eval', leave=False,
             disable=not progress or jax.process_index() != 0)
  for batch in bar:
    inputs = parallel.to_global(mesh, {k: batch[k] for k in ('image', 'label', 'valid')})
    predictions = segment(variables, inputs['image'], out_size=tuple(batch['label'].shape[1:3]))
    total += np.asarray(count_fn(predictions, inputs['label'], valid=inputs['valid']), np.int64)
    seen += int(batch['valid'].sum()) * jax.process_count()
    bar.set_postfix_str(f'{seen / (time.perf_counter() - start):.2f} img/s')
    if on_batch is not None:
      on_batch(batch, parallel.local_rows(predictions)[batch['valid']])
  return {**metrics.segmentation_scores(total), 'confusion': total, 'images': len(source),
          'seconds': time.perf_counter() - start}
