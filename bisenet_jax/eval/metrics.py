"""Confusion matrix -> per-class IoU, mIoU and pixel accuracy, computed as the reference does.

Counting happens on device, one batch at a time (``confusion_matrix``, jit-able, works on a
sharded batch), or on the host for predictions already there (``host_confusion_matrix``, NumPy:
an exported model's); the totals and scores live on the host in 64-bit (``segmentation_scores``).
Only ``confusion_matrix`` imports JAX, when called: evaluating an exported file runs without it.
docs/reference.md §6, per class c over the whole split: intersect_c = #(pred = c and gt = c),
union_c = #(pred = c) + #(gt = c) - intersect_c, IoU_c = intersect_c / union_c, and mIoU is the
mean over the classes whose IoU is defined (a class absent from both predictions and labels
has NaN and is skipped). Pixels whose label is ignored count nowhere, not even as false
positives, as in sssegmentation and the official cityscapesscripts evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
  import jax


def confusion_matrix(pred: jax.Array, label: jax.Array, num_classes: int = 19,
                     ignore_label: int = 255, valid: jax.Array | None = None) -> jax.Array:
  """Pixel counts of (ground truth, prediction) pairs for one batch.

  A ``bincount`` of ``label * K + pred`` per image, summed over the batch; excluded pixels go to
  bin K*K, which bincount drops. Counting per image keeps a batch sharded over devices local:
  each device counts its own images and only the [N, K*K] partial counts are reduced (a single
  bincount over the flattened batch does not even trace on a mesh with explicit axis types,
  ``jax.make_mesh``'s default).

  The counts are int32 (JAX's default integer): exact for one batch, but a whole split can
  exceed 2**31 pixels (Cityscapes val alone has 1.05e9), so accumulate batches on the host in
  int64: ``total += np.asarray(confusion_matrix(...), np.int64)``.

  Args:
    pred: int[N, H, W] predicted class ids; must lie in [0, K) (an argmax always does).
    label: int[N, H, W] ground-truth class ids (uint8 in this project). Pixels equal to
      ``ignore_label`` or outside [0, K) are not counted (the reference maps them to -1).
    num_classes: K.
    ignore_label: label value of ignored pixels.
    valid: optional bool[N]; False drops the whole image (padding rows of the last batch).

  Returns:
    int32[K, K]: entry [g, p] counts pixels with ground truth g predicted as p (rows = truth).
  """
  import jax
  import jax.numpy as jnp
  index = _bin_index(jnp, pred, label, num_classes, ignore_label, valid)
  bins = num_classes * num_classes
  per_image = jax.vmap(lambda image: jnp.bincount(image, length=bins))
  counts = per_image(index.reshape(index.shape[0], -1)).sum(axis=0)
  return counts.reshape(num_classes, num_classes)


def host_confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int = 19,
                          ignore_label: int = 255, valid: np.ndarray | None = None
                          ) -> np.ndarray:
  """``confusion_matrix`` (same arguments and counts) in NumPy, as int64 [K, K]."""
  bins = num_classes * num_classes
  index = _bin_index(np, pred, label, num_classes, ignore_label, valid)
  return np.bincount(index.ravel(), minlength=bins + 1)[:bins].reshape(num_classes, num_classes)


def _bin_index(xp, pred, label, num_classes: int, ignore_label: int, valid):
  """``label * K + pred`` per pixel, K*K where the pixel is not counted; ``xp``: jax.numpy or
  numpy, whichever holds the arrays."""
  label = label.astype(xp.int32)
  keep = (label != ignore_label) & (label >= 0) & (label < num_classes)
  if valid is not None:
    keep = keep & xp.reshape(valid, (-1,) + (1,) * (label.ndim - 1))
  return xp.where(keep, label * num_classes + pred.astype(xp.int32), num_classes * num_classes)


def segmentation_scores(confusion: np.ndarray) -> dict:
  """IoU, mIoU, pixel accuracy and per-class accuracy from an accumulated confusion matrix.

  Args:
    confusion: int[K, K] counts, rows = ground truth, columns = prediction.

  Returns:
    A dict, all computed in float64:
      ``iou``: float64[K], NaN for a class absent from both labels and predictions;
      ``miou``: float, the mean of the non-NaN IoUs (NaN if there are none);
      ``aacc``: float, correctly classified pixels / counted pixels;
      ``acc``: float64[K], per-class recall intersect_c / #(gt = c), NaN if the class has no
        labelled pixel.
  """
  confusion = np.asarray(confusion, np.float64)
  intersect = np.diag(confusion)
  label_area = confusion.sum(axis=1)
  pred_area = confusion.sum(axis=0)
  union = pred_area + label_area - intersect
  with np.errstate(divide='ignore', invalid='ignore'):  # 0 / 0 -> NaN is the intended result.
    iou = intersect / union
    acc = intersect / label_area
    aacc = intersect.sum() / label_area.sum()
  return {'iou': iou, 'miou': _nanmean(iou), 'aacc': float(aacc), 'acc': acc}


def _nanmean(values: np.ndarray) -> float:
  """np.nanmean without its warning when every value is NaN (no class seen at all)."""
  defined = values[~np.isnan(values)]
  return float(defined.mean()) if defined.size else float('nan')


def format_table(scores: dict, class_names: Sequence[str]) -> str:
  """A per-class table (IoU %, Acc %) followed by mIoU and aAcc lines, for logs and the CLI.

  Args:
    scores: the output of ``segmentation_scores``.
    class_names: one name per class, in class-id order.

  Returns:
    Multi-line text; undefined values print as ``n/a``.
  """
  if len(class_names) != len(scores['iou']):
    raise ValueError(f'{len(class_names)} class names for {len(scores["iou"])} classes.')
  width = max(len('class'), *(len(name) for name in class_names))
  lines = [f'{"class":<{width}}  {"IoU %":>6}  {"Acc %":>6}']
  for name, iou, acc in zip(class_names, scores['iou'], scores['acc']):
    lines.append(f'{name:<{width}}  {_percent(iou)}  {_percent(acc)}')
  lines.append(f'{"mIoU":<{width}}  {_percent(scores["miou"])}')
  lines.append(f'{"aAcc":<{width}}  {_percent(scores["aacc"])}')
  return '\n'.join(lines)


def _percent(value: float) -> str:
  return f'{"n/a":>6}' if np.isnan(value) else f'{100 * value:6.2f}'
