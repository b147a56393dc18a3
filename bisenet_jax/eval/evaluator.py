"""mIoU over a whole split, sharded over every device: the evaluator of training and ``evaluate``.

Each process reads its own share of the split (``pipeline.EvalBatches``: batches of one image
size, the same sizes in the same order in every process), batches are sharded over the mesh's
data axis, and each batch's confusion matrix is one global reduction; the host sums them in
int64 (``host.accumulate``). Rows added to fill a batch are masked, so every image counts
exactly once.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import numpy as np

from bisenet_jax import parallel
from bisenet_jax.data import pipeline
from bisenet_jax.data.normalization import normalize_on_device
from bisenet_jax.eval import host, inference, metrics
from bisenet_jax.specs import InferenceSpec


def make_segment_fn(model, spec: InferenceSpec = InferenceSpec(), outputs: str = 'labels',
                    precision: str = 'highest') -> Callable:
  """``(variables, uint8 RGB images, out_size) -> uint8 labels``: the jitted shared inference.

  Images arrive as uint8 [N, H, W, 3] RGB and are normalised on the device, as in training.
  ``outputs='logits'`` returns the float32 [N, out_h, out_w, K] logits whose argmax the labels
  are. ``precision``: of float32 convolutions and matmuls (``jax.default_matmul_precision``);
  'highest' is full float32, as the reference evaluates (TF32 off), where JAX's default runs
  TF32 on NVIDIA GPUs since Ampere and one bfloat16 pass on TPUs.
  """
  predict = {'labels': inference.predict_labels, 'logits': inference.segment_logits}[outputs]

  @functools.partial(jax.jit, static_argnames='out_size')
  def segment(variables, images, out_size):
    logits_fn = lambda x: model.apply(variables, x, train=False)
    with jax.default_matmul_precision(precision):
      return predict(logits_fn, normalize_on_device(images), out_size, spec)

  return segment


def evaluate(model, variables, source, *, mesh, resize_to: Sequence[int],
             spec: InferenceSpec = InferenceSpec(), batch_per_device: int = 1,
             precision: str = 'highest', progress: bool = True,
             on_batch: Callable[[dict, np.ndarray], None] | None = None) -> dict:
  """Evaluates ``model`` on every sample of ``source``.

  Args:
    model: the Flax segmentor; ``variables`` its params and batch_stats (any placement).
    source: random-access samples ``{'image', 'label', 'name'}`` (e.g. ``CityscapesFolder``).
    mesh: the device mesh; the global batch is ``batch_per_device * mesh.size``.
    resize_to: (height, width) of the test Resize (a no-op for 1024x2048 Cityscapes frames).
    spec: whole/slide, flip, scales, input size.
    precision: of float32 convolutions and matmuls (``make_segment_fn``).
    on_batch: called with each host batch and its predicted labels (valid rows only), e.g. to
      write prediction files.

  Returns:
    ``metrics.segmentation_scores`` of the split plus ``confusion`` (int64 [K, K]),
    ``images`` (count) and ``seconds``.
  """
  segment = make_segment_fn(model, spec, precision=precision)
  count_fn = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=model.num_classes))
  variables = jax.device_put(variables, parallel.replicated(mesh))
  batches = pipeline.EvalBatches(
      source, batch_size=batch_per_device * len(mesh.local_devices), resize_to=resize_to,
      process_index=jax.process_index(), process_count=jax.process_count())

  def predict_and_count(batch):
    inputs = parallel.to_global(mesh, {k: batch[k] for k in ('image', 'label', 'valid')})
    predictions = segment(variables, inputs['image'], out_size=tuple(batch['label'].shape[1:3]))
    counts = count_fn(predictions, inputs['label'], valid=inputs['valid'])
    return parallel.local_rows(predictions)[batch['valid']], counts

  return host.accumulate(batches, predict_and_count, model.num_classes, len(source),
                         progress=progress, on_batch=on_batch, process_index=jax.process_index(),
                         process_count=jax.process_count())
