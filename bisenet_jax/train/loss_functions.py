"""sssegmentation 1.7.0's configurable segmentation losses and its OHEM pixel sampler, in JAX.

The toolbox configures every head's loss as a dict, or a list of dicts whose losses are summed,
with the type names CrossEntropyLoss, DiceLoss, FocalLoss and LovaszLoss, plus one optional
``head.pixelsampler`` (OHEMPixelSampler) that every head shares (docs/reference.md §9). The
functions here take the toolbox's argument names and defaults, except that ignored pixels are 255
(the toolbox's default ``ignore_index`` is -100, its ignore label). Each one applies its own
``scale_factor`` and ``lowest_loss_value`` after the reduction, as the toolbox's loss modules do:
``head_loss`` adds no weight of its own, and heads are summed with weight 1.

Every function takes logits float[N, H, W, K] (NHWC) already upsampled to the labels' size, and
labels int[N, H, W] holding class ids in [0, K) or ``ignore_index``; a label outside both makes
the loss NaN (the toolbox raises, or for some losses counts it as background). Math runs in
float32, or float64 for float64 logits. ``sample_mask`` (bool[N, H, W], from
``ohem_pixel_mask``) stands for the toolbox's pixel sampler, which hands the losses only the kept
pixels, flattened into a batch of points: pixels outside it are ignored, and the losses that work
per image (DiceLoss, LovaszLoss with ``per_image``) then treat each kept pixel as an image of its
own, as the toolbox does.

"The batch" is the images a function is given. In training that is each reference replica's own
images, as each GPU's under the toolbox's DistributedDataParallel (``losses.make_objective``):
the OHEM ranking and a batch Lovasz sort never span replicas.

``bisenet_jax.train.losses`` holds the fast default objective (plain cross-entropy); this module
is the general, slower one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bisenet_jax.errors import UserError
from bisenet_jax.models.layers import at_least_float32

REDUCTIONS = ('mean', 'sum', 'none')
LOVASZ_CLASSES = ('all', 'present')


def _prepare(logits: jax.Array, labels: jax.Array, ignore_index: int,
             sample_mask: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(logits in the compute dtype, int32 labels, bool[N, H, W] pixels that enter the loss).

  A label that is neither ignored nor a class id turns that pixel's logits into NaN.
  """
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_index
  if sample_mask is not None:
    valid = valid & sample_mask
  num_classes = logits.shape[-1]
  bad = valid & ((labels < 0) | (labels >= num_classes))
  logits = logits.astype(at_least_float32(logits.dtype))
  return jnp.where(bad[..., None], jnp.nan, logits), labels, valid


def _rescale(loss: jax.Array, scale_factor: float, lowest_loss_value: float | None) -> jax.Array:
  """The toolbox's last step of every loss: scale, then reflect below ``lowest_loss_value``."""
  loss = loss * scale_factor
  if lowest_loss_value is None:
    return loss
  return jnp.abs(loss - lowest_loss_value) + lowest_loss_value


def _safe_ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator, NaN where the denominator is 0, with finite gradients there."""
  nonzero = denominator != 0
  return jnp.where(nonzero, numerator / jnp.where(nonzero, denominator, 1), jnp.nan)


def _reduce_pixels(per_class: jax.Array, target: jax.Array, valid: jax.Array, *,
                   sum_classes: bool, class_weight, reduction: str,
                   norm_loss_with_class_weight: bool, scale_factor: float,
                   lowest_loss_value: float | None,
                   pixel_weight: jax.Array | None = None) -> jax.Array:
  """The toolbox's class weighting, ``reducelosswithweight`` and rescaling over valid pixels.

  Args:
    per_class: float[N, H, W, K] per-(pixel, class) losses.
    target: float[N, H, W, K] one-hot labels.
    valid: bool[N, H, W] pixels that enter the loss.
    sum_classes: softmax losses sum the classes first, so their elements are pixels; sigmoid
      losses keep one element per (pixel, class).
    class_weight: None or K weights multiplying each class's column.
    reduction: 'mean' divides by the count of elements, or with class weights (and
      ``norm_loss_with_class_weight``) by the sum of the weights of the valid pixels' classes;
      'sum'; 'none' returns the elements, zero on the pixels left out.
    norm_loss_with_class_weight: see ``reduction``.
    scale_factor, lowest_loss_value: see ``_rescale``.
    pixel_weight: None or float[N, H, W] multiplying each pixel's loss (not the denominator).

  Returns:
    A scalar, or for 'none' float[N, H, W] (sum_classes) or float[N, H, W, K].
  """
  if class_weight is not None:
    class_weight = jnp.asarray(class_weight, per_class.dtype)
    per_class = per_class * class_weight
  elements = per_class.sum(-1) if sum_classes else per_class
  mask = valid if sum_classes else valid[..., None]
  if pixel_weight is not None:
    pixel_weight = jnp.asarray(pixel_weight, per_class.dtype)
    elements = elements * (pixel_weight if sum_classes else pixel_weight[..., None])
  elements = jnp.where(mask, elements, 0.0)
  if reduction == 'none':
    return jnp.where(mask, _rescale(elements, scale_factor, lowest_loss_value), 0.0)
  total = elements.sum()
  if reduction == 'mean' and class_weight is not None and norm_loss_with_class_weight:
    total = total / jnp.where(valid[..., None], target * class_weight, 0.0).sum()
  elif reduction == 'mean':
    total = total / jnp.broadcast_to(mask, elements.shape).sum()
  return _rescale(total, scale_factor, lowest_loss_value)


def _binary_cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
  """Element-wise ``F.binary_cross_entropy_with_logits`` (log(1 + e^x) - x * t, stable)."""
  return jnp.logaddexp(0.0, logits) - logits * target


def cross_entropy(logits: jax.Array, labels: jax.Array, *, use_sigmoid: bool = False,
                  class_weight: Sequence[float] | None = None,
                  label_smoothing: float | None = None, ignore_index: int = 255,
                  reduction: str = 'mean', norm_loss_with_class_weight: bool = True,
                  scale_factor: float = 1.0, lowest_loss_value: float | None = None,
                  pixel_weight: jax.Array | None = None,
                  sample_mask: jax.Array | None = None) -> jax.Array:
  """The toolbox's CrossEntropyLoss.

  Softmax (default): per valid pixel i with label y, l_i = (1 - e) * (-log p_y) + (e / K) *
  sum_k(-log p_k) with e = ``label_smoothing`` (PyTorch's definition, computed **without** class
  weights), then multiplied by w_y = ``class_weight[y]`` and ``pixel_weight``. 'mean' is
  sum_i(w_y l_i) / sum_i(w_y) with class weights (as ``F.cross_entropy(weight=...)`` without
  smoothing), else the mean over valid pixels. ``use_sigmoid``: per-(pixel, class) binary
  cross-entropy against the one-hot label, each class column times its weight; 'mean' divides by
  N_valid * K, or with class weights by sum_i(w_y); ``label_smoothing`` has no effect there.

  Args:
    logits: float[N, H, W, K] (NHWC).
    labels: int[N, H, W].
    use_sigmoid, class_weight, label_smoothing, ignore_index, reduction, scale_factor,
      lowest_loss_value, norm_loss_with_class_weight: the toolbox's arguments. With
      ``norm_loss_with_class_weight=False``, 'mean' divides by the count of elements even with
      class weights.
    pixel_weight: the toolbox's ``forward(weight=...)``: float[N, H, W] multiplying each pixel's
      loss, not the denominator (for ``use_sigmoid``, every class of the pixel). Heads never
      pass it.
    sample_mask: bool[N, H, W] pixels kept by the pixel sampler; the others are ignored.

  Returns:
    Scalar; NaN for 'mean' when no pixel is valid (as the toolbox). 'none' returns float[N, H, W]
    (float[N, H, W, K] with ``use_sigmoid``), zero on ignored pixels: the toolbox fails on it.
  """
  logits, labels, valid = _prepare(logits, labels, ignore_index, sample_mask)
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if use_sigmoid:
    per_class = _binary_cross_entropy(logits, target)
  else:
    log_probs = jax.nn.log_softmax(logits)
    per_pixel = -(target * log_probs).sum(-1)
    if label_smoothing:
      per_pixel = (1 - label_smoothing) * per_pixel - label_smoothing * log_probs.mean(-1)
    per_class = target * per_pixel[..., None]
  return _reduce_pixels(per_class, target, valid, sum_classes=not use_sigmoid,
                        class_weight=class_weight, reduction=reduction,
                        norm_loss_with_class_weight=norm_loss_with_class_weight,
                        scale_factor=scale_factor, lowest_loss_value=lowest_loss_value,
                        pixel_weight=pixel_weight)


def focal_loss(logits: jax.Array, labels: jax.Array, *, use_sigmoid: bool = True,
               gamma: float = 2.0, alpha: float = 0.25,
               class_weight: Sequence[float] | None = None, reduction: str = 'mean',
               ignore_index: int = 255, norm_loss_with_class_weight: bool = True,
               scale_factor: float = 1.0, lowest_loss_value: float | None = None,
               sample_mask: jax.Array | None = None) -> jax.Array:
  """The toolbox's FocalLoss: sigmoid-based by default, on the valid pixels only.

  Sigmoid (default): for every (valid pixel, class) with one-hot target t and p = sigmoid(x),
  BCE(x, t) * (alpha t + (1 - alpha)(1 - t)) * ((1 - p) t + p (1 - t))^gamma, times the class's
  weight; 'mean' divides by N_valid * K, or with class weights by sum over pixels of w_y.
  ``use_sigmoid=False``: alpha (1 - p_y)^gamma (-log p_y) w_y per valid pixel (softmax p);
  'mean' divides by N_valid, or by sum of w_y. On CUDA with mmcv the toolbox calls mmcv's kernels
  instead, with the same formulas.

  Args:
    logits: float[N, H, W, K] (NHWC).
    labels: int[N, H, W].
    use_sigmoid, gamma, alpha, class_weight, reduction, ignore_index,
      norm_loss_with_class_weight, scale_factor, lowest_loss_value: the toolbox's arguments.
    sample_mask: bool[N, H, W] pixels kept by the pixel sampler; the others are ignored.

  Returns:
    Scalar; NaN for 'mean' when no pixel is valid. 'none' returns float[N, H, W, K] (sigmoid) or
    float[N, H, W] (softmax), zero on ignored pixels: the toolbox fails on it when a pixel is
    ignored.
  """
  logits, labels, valid = _prepare(logits, labels, ignore_index, sample_mask)
  target = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if use_sigmoid:
    probs = jax.nn.sigmoid(logits)
    one_minus_pt = (1 - probs) * target + probs * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * one_minus_pt**gamma
    per_class = _binary_cross_entropy(logits, target) * focal_weight
  else:
    log_probs = jax.nn.log_softmax(logits)
    per_class = alpha * target * (1 - jnp.exp(log_probs))**gamma * -log_probs
  return _reduce_pixels(per_class, target, valid, sum_classes=not use_sigmoid,
                        class_weight=class_weight, reduction=reduction,
                        norm_loss_with_class_weight=norm_loss_with_class_weight,
                        scale_factor=scale_factor, lowest_loss_value=lowest_loss_value)


def _reduce_images(values: jax.Array, exists: jax.Array | None, reduction: str,
                   scale_factor: float, lowest_loss_value: float | None) -> jax.Array:
  """Mean / sum / identity over per-image values, then ``_rescale``.

  ``exists`` masks the points that the sampler dropped: they are zero in 'none' outputs.
  """
  if exists is None:
    exists = jnp.ones(values.shape, bool)
  values = jnp.where(exists, values, 0.0)
  if reduction == 'none':
    return jnp.where(exists, _rescale(values, scale_factor, lowest_loss_value), 0.0)
  total = values.sum() if reduction == 'sum' else values.sum() / exists.sum()
  return _rescale(total, scale_factor, lowest_loss_value)


def _activate(logits: jax.Array, activate: bool, use_sigmoid: bool) -> jax.Array:
  if not activate:
    return logits
  if use_sigmoid:
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits) if logits.shape[-1] > 1 else logits


def dice_loss(logits: jax.Array, labels: jax.Array, *, use_sigmoid: bool = True,
              activate: bool = True, reduction: str = 'mean', naive_dice: bool = False,
              eps: float = 1e-3, scale_factor: float = 1.0, ignore_index: int = 255,
              lowest_loss_value: float | None = None,
              sample_mask: jax.Array | None = None) -> jax.Array:
  """The toolbox's DiceLoss: one Dice score per image over all its classes and valid pixels.

  With p the activated logits (sigmoid by default; softmax with ``use_sigmoid=False``; raw with
  ``activate=False``) and t the one-hot labels, both zeroed on ignored pixels, each image gets
  a = sum(p t) over its pixels and classes, and 1 - 2a / (sum(p^2) + eps + sum(t^2) + eps), or
  with ``naive_dice`` 1 - (2a + eps) / (sum(p) + sum(t) + eps). 'mean' / 'sum' reduce over the
  images. With ``sample_mask`` every kept pixel is an image of its own (the toolbox's sampler
  output), and the reduction runs over the kept pixels.

  Args:
    logits: float[N, H, W, K] (NHWC).
    labels: int[N, H, W].
    use_sigmoid, activate, reduction, naive_dice, eps, scale_factor, ignore_index,
      lowest_loss_value: the toolbox's arguments.
    sample_mask: bool[N, H, W] pixels kept by the pixel sampler.

  Returns:
    Scalar; 'none' returns float[N] per image, or float[N, H, W] per kept pixel (zero elsewhere)
    with ``sample_mask``. An image without valid pixels gets loss 1 (0 with ``naive_dice``).
  """
  logits, labels, valid = _prepare(logits, labels, ignore_index, sample_mask)
  mask = valid[..., None]
  probs = jnp.where(mask, _activate(logits, activate, use_sigmoid), 0.0)
  target = jnp.where(mask, jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), 0.0)
  sums = [jnp.sum(x, -1) for x in (probs * target, probs if naive_dice else probs**2,
                                   target if naive_dice else target**2)]
  if sample_mask is None:
    sums = [jnp.sum(x, (1, 2)) for x in sums]
  overlap, prob_mass, target_mass = sums
  if naive_dice:
    dice = (2 * overlap + eps) / (prob_mass + target_mass + eps)
  else:
    dice = 2 * overlap / (prob_mass + eps + target_mass + eps)
  return _reduce_images(1 - dice, sample_mask, reduction, scale_factor, lowest_loss_value)


def _lovasz_gradient(sorted_target: jax.Array) -> jax.Array:
  """Differences of the Jaccard loss along targets sorted by decreasing error (Berman et al.)."""
  foreground = sorted_target.sum()
  intersection = foreground - jnp.cumsum(sorted_target)
  union = foreground + jnp.cumsum(1 - sorted_target)
  jaccard = 1 - intersection / union
  return jnp.concatenate([jaccard[:1], jnp.diff(jaccard)])


def _lovasz_extension(errors: jax.Array, target: jax.Array, valid: jax.Array, *,
                      hinge: bool) -> jax.Array:
  """dot(sorted errors, Lovasz gradient) over the valid entries of float[P] errors / targets.

  Left-out entries sort last with zero error and zero target, which leaves the valid prefix's
  values unchanged. ``hinge`` applies ReLU to the errors (the sigmoid variant).
  """
  order = jnp.argsort(jnp.where(valid, errors, -jnp.inf), descending=True)
  sorted_errors = jnp.where(valid, errors, 0.0)[order]
  if hinge:
    sorted_errors = jax.nn.relu(sorted_errors)
  return jnp.dot(sorted_errors, _lovasz_gradient(jnp.where(valid, target, 0.0)[order]))


def _softmax_lovasz(probs, target, valid, *, selected, present_only, class_weight) -> jax.Array:
  """One group's softmax Lovasz: probs / target float[P, K], valid bool[P], selected bool[K].

  A Lovasz loss per class on |t - p| over the group's valid pixels, averaged (weighted by the
  class weights) over the selected classes, or over those present with ``present_only``. NaN
  when no class is left (the toolbox raises).
  """
  per_class = jax.vmap(lambda errors, target_column: _lovasz_extension(
      errors, target_column, valid, hinge=False), in_axes=1)(jnp.abs(target - probs), target)
  included = selected
  if present_only:
    included = included & (jnp.where(valid[:, None], target, 0.0).sum(0) > 0)
  weights = jnp.where(included, 1.0 if class_weight is None else class_weight, 0.0)
  return _safe_ratio(jnp.sum(weights * per_class), jnp.sum(weights))


def _sigmoid_lovasz(probs, target, valid, *, selected, present_only, class_weight) -> jax.Array:
  """One group's sigmoid Lovasz: one hinge over all its (valid pixel, selected class) entries.

  Errors are 1 - p * (2t - 1) with p the sigmoid probability, times the class weight.
  """
  included = selected
  if present_only:
    included = included & (jnp.where(valid[:, None], target, 0.0).sum(0) > 0)
  errors = 1 - probs * (2 * target - 1)
  if class_weight is not None:
    errors = errors * class_weight
  entries = valid[:, None] & included
  return _lovasz_extension(errors.ravel(), target.ravel(), entries.ravel(), hinge=True)


def _selected_classes(classes, num_classes: int, ignore_index: int, use_sigmoid: bool):
  """bool[K] of the classes a Lovasz loss may include, before the 'present' test."""
  ids = range(num_classes) if classes in LOVASZ_CLASSES else set(classes)
  # The sigmoid variant drops a class equal to ignore_index; the softmax one keeps it.
  return jnp.array([k in ids and not (use_sigmoid and k == ignore_index)
                    for k in range(num_classes)])


def lovasz_loss(logits: jax.Array, labels: jax.Array, *, use_sigmoid: bool = False,
                classes: str | Sequence[int] = 'present', per_image: bool = False,
                reduction: str = 'mean', class_weight: Sequence[float] | None = None,
                scale_factor: float = 1.0, ignore_index: int = 255,
                lowest_loss_value: float | None = None,
                sample_mask: jax.Array | None = None) -> jax.Array:
  """The toolbox's LovaszLoss, over the whole batch's valid pixels unless ``per_image``.

  Softmax (default): per class c, the Lovasz extension of the Jaccard loss on errors |t_c - p_c|
  of the valid pixels (sorted decreasingly); the mean over classes, or sum(w_c l_c) / sum(w_c)
  with class weights. ``classes``: 'present' (classes with a valid pixel in the group), 'all',
  or a list of ids. ``use_sigmoid``: p = sigmoid(x), one Lovasz hinge over the flattened
  (pixel, class) entries with errors (1 - p (2t - 1)) w_c, ReLU'd. ``per_image``: one loss per
  image, reduced by ``reduction`` over images; otherwise one scalar for the batch (reduction has
  no effect). With ``sample_mask`` the kept pixels form the batch, and with ``per_image`` each
  kept pixel is an image.

  Args:
    logits: float[N, H, W, K] (NHWC).
    labels: int[N, H, W].
    use_sigmoid, classes, per_image, reduction, class_weight, scale_factor, ignore_index,
      lowest_loss_value: the toolbox's arguments.
    sample_mask: bool[N, H, W] pixels kept by the pixel sampler.

  Returns:
    Scalar, or for 'none' with ``per_image`` float[N] (float[N, H, W] with ``sample_mask``).
    Softmax with 'present' is NaN for a group without valid pixels (the toolbox raises); the
    sigmoid variant gives 0 there.
  """
  num_classes = logits.shape[-1]
  logits, labels, valid = _prepare(logits, labels, ignore_index, sample_mask)
  target = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if use_sigmoid:
    probs, group_loss = jax.nn.sigmoid(logits), _sigmoid_lovasz
  else:
    probs, group_loss = _activate(logits, True, False), _softmax_lovasz
  if class_weight is not None:
    class_weight = jnp.asarray(class_weight, logits.dtype)
  group_loss = functools.partial(
      group_loss, selected=_selected_classes(classes, num_classes, ignore_index, use_sigmoid),
      present_only=classes == 'present', class_weight=class_weight)
  # Groups of pixels scored together: the batch, each image, or each kept pixel.
  if not per_image:
    groups = (1, -1)
  elif sample_mask is None:
    groups = (labels.shape[0], -1)
  else:
    groups = (-1, 1)
  values = jax.vmap(group_loss)(probs.reshape(*groups, num_classes),
                                target.reshape(*groups, num_classes), valid.reshape(groups))
  if not per_image:
    return _rescale(values[0], scale_factor, lowest_loss_value)
  if sample_mask is not None:
    values = values.reshape(labels.shape)
  return _reduce_images(values, sample_mask, reduction, scale_factor, lowest_loss_value)


def ohem_pixel_mask(logits: jax.Array, labels: jax.Array, *, thresh: float,
                    min_kept_per_image: int = 100000, ignore_index: int = 255) -> jax.Array:
  """The pixels that the toolbox's OHEMPixelSampler (``thresh`` form) hands to the losses.

  With p the softmax probability of each valid pixel's label and s those probabilities sorted
  increasingly over the **whole batch**, the threshold is max(s[min(k, n - 1)], thresh), where
  k = min_kept_per_image * N and n is the count of valid pixels (s[...] counts as 0 when n = 0),
  and the sampler keeps the valid pixels with p **strictly** below it. So when fewer than k
  pixels lie below ``thresh``, exactly the pixels below the (k+1)-th smallest p are kept (fewer
  on ties), and when n <= k every valid pixel except those with the largest p is kept.

  A loss consumes the mask as ``sample_mask``: dropped pixels leave the loss and its mean's
  denominator exactly like ignored ones (the toolbox passes only the kept pixels on), and
  DiceLoss and per-image LovaszLoss score each kept pixel as an image of its own. The mask
  carries no gradient. A valid label outside [0, K) counts as p = 0 (kept), so the loss turns
  NaN.

  Args:
    logits: float[N, H, W, K] (NHWC), the head's logits at the labels' size.
    labels: int[N, H, W].
    thresh: probability threshold in (0, 1).
    min_kept_per_image: k / N above.
    ignore_index: label of ignored pixels (the toolbox's default is -100, its ignore label).

  Returns:
    bool[N, H, W].
  """
  logits = logits.astype(at_least_float32(logits.dtype))
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_index
  in_range = (labels >= 0) & (labels < logits.shape[-1])
  probs = jax.nn.softmax(logits)
  label_probs = jnp.take_along_axis(probs, jnp.where(in_range, labels, 0)[..., None], -1)[..., 0]
  label_probs = jnp.where(in_range, label_probs, 0.0)
  ascending = jnp.sort(jnp.where(valid, label_probs, jnp.inf).ravel())
  count = valid.sum()
  kth = ascending[jnp.clip(jnp.minimum(min_kept_per_image * labels.shape[0], count - 1), 0)]
  threshold = jnp.maximum(jnp.where(count > 0, kth, 0.0), thresh)
  return jax.lax.stop_gradient(valid & (label_probs < threshold))


LOSSES: dict[str, Callable[..., jax.Array]] = {
    'CrossEntropyLoss': cross_entropy,
    'DiceLoss': dice_loss,
    'FocalLoss': focal_loss,
    'LovaszLoss': lovasz_loss,
}


# Config checks: each returns None when the value is fine, else what to write instead.
def _number(value) -> str | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
    return 'write a finite number'
  return None


def _optional_number(value) -> str | None:
  return None if value is None else _number(value)


def _flag(value) -> str | None:
  return None if isinstance(value, bool) else 'write True or False'


def _ignore_index(value) -> str | None:
  if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
    return ('labels here are uint8 with ignored pixels at 255: write 255 (the toolbox\'s -100)'
            ' or another label in [0, 255]')
  return None


def _reduction(value) -> str | None:
  return None if value in REDUCTIONS else f'write one of {", ".join(map(repr, REDUCTIONS))}'


def _pixel_reduction(value) -> str | None:
  if value == 'none':
    return ("the toolbox cannot reduce this loss's unreduced values to a head loss (it fails): "
            "write 'mean' or 'sum'")
  return _reduction(value)


def _label_smoothing(value) -> str | None:
  if value is not None and (_number(value) or not 0 <= value <= 1):
    return 'write None or a number in [0, 1]'
  return None


def _class_weight(num_classes: int) -> Callable[[Any], str | None]:
  def check(value):
    if value is None:
      return None
    if (isinstance(value, (str, Mapping)) or not isinstance(value, Sequence)
        or any(_number(v) for v in value)):
      return f'write None or a list of {num_classes} numbers, one per class'
    if len(value) != num_classes:
      return (f'it has {len(value)} values but the model has {num_classes} classes: write one '
              'weight per class')
    return None
  return check


def _lovasz_classes(num_classes: int) -> Callable[[Any], str | None]:
  def check(value):
    if value in LOVASZ_CLASSES:
      return None
    if (isinstance(value, (list, tuple)) and value
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < num_classes
                for v in value)):
      return None
    return f"write 'present', 'all' or a list of class ids in [0, {num_classes})"
  return check


def _loss_checks(num_classes: int) -> dict[str, dict[str, Callable[[Any], str | None]]]:
  """For each toolbox loss type: its arguments and their checks."""
  common = {'scale_factor': _number, 'lowest_loss_value': _optional_number,
            'ignore_index': _ignore_index, 'use_sigmoid': _flag}
  weighted = {'class_weight': _class_weight(num_classes), 'norm_loss_with_class_weight': _flag}
  return {
      'CrossEntropyLoss': {**common, **weighted, 'reduction': _pixel_reduction,
                           'label_smoothing': _label_smoothing},
      'DiceLoss': {**common, 'reduction': _reduction, 'activate': _flag, 'naive_dice': _flag,
                   'eps': _number},
      'FocalLoss': {**common, **weighted, 'reduction': _pixel_reduction, 'gamma': _number,
                    'alpha': _number},
      'LovaszLoss': {**common, 'reduction': _reduction, 'per_image': _flag,
                     'class_weight': _class_weight(num_classes),
                     'classes': _lovasz_classes(num_classes)},
  }


def _sampler_checks() -> dict[str, Callable[[Any], str | None]]:
  def thresh(value):
    if _number(value) or not 0 < value < 1:
      return 'write a probability strictly between 0 and 1, e.g. 0.7'
    return None

  def min_kept(value):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 1:
      return 'write an integer above 1 (the toolbox asserts > 1), e.g. 100000'
    return None
  return {'thresh': thresh, 'min_kept_per_image': min_kept, 'ignore_index': _ignore_index}


def _check_entry(entry, where: str, checks: Mapping[str, Mapping[str, Callable]]) -> None:
  """Raises UserError unless ``entry`` is a mapping with a known 'type' and valid arguments."""
  if not isinstance(entry, Mapping) or 'type' not in entry:
    raise UserError(f"{where}: expected a dict with a 'type' key, got {entry!r}: write e.g. "
                    "{'type': 'CrossEntropyLoss'}.")
  kind = entry['type']
  if kind not in checks:
    raise UserError(f'{where}: unknown type {kind!r}: write one of '
                    f'{", ".join(map(repr, checks))}.')
  for key, value in entry.items():
    if key == 'type':
      continue
    if key not in checks[kind]:
      raise UserError(f'{where} ({kind}): unknown key {key!r}: write only '
                      f'{", ".join(map(repr, ("type", *checks[kind])))}.')
    problem = checks[kind][key](value)
    if problem:
      raise UserError(f'{where} ({kind}): {key}={value!r} is not accepted: {problem}.')


def check_head_losses(losses, num_classes: int, *, sampler: Mapping | None = None,
                      name: str = 'losses') -> None:
  """Raises UserError (one line) unless ``losses`` and ``sampler`` are usable by ``head_loss``.

  Cheap and pure Python: call it for every head before training starts.

  Args:
    losses: one head's loss config: a dict, or a non-empty list of dicts whose losses are
      summed; each has 'type' (CrossEntropyLoss, DiceLoss, FocalLoss, LovaszLoss) and that
      loss's keyword arguments.
    num_classes: K, for the lengths of class weights and Lovasz class ids.
    sampler: None or the toolbox's ``head.pixelsampler``: {'type': 'OHEMPixelSampler', 'thresh',
      'min_kept_per_image', 'ignore_index'}. Its ``loss_func`` form is not supported.
    name: how messages refer to the head (e.g. 'loss_aux1').
  """
  entries = [losses] if isinstance(losses, Mapping) else losses
  if isinstance(entries, str) or not isinstance(entries, Sequence) or not entries:
    raise UserError(f'{name}: expected a loss dict or a non-empty list of them, got {losses!r}: '
                    "write e.g. {'type': 'CrossEntropyLoss'}.")
  checks = _loss_checks(num_classes)
  for index, entry in enumerate(entries):
    where = name if isinstance(losses, Mapping) else f'{name}[{index}]'
    _check_entry(entry, where, checks)
    if (entry['type'] == 'LovaszLoss' and entry.get('use_sigmoid') and entry.get('classes') == 'all'
        and entry.get('class_weight') is not None):
      raise UserError(f"{where} (LovaszLoss): use_sigmoid with classes='all' and class_weight "
                      'fails in the toolbox (IndexError): write classes as the list of all class '
                      f'ids, list(range({num_classes})).')
  if sampler is not None:
    _check_entry(sampler, 'pixelsampler', {'OHEMPixelSampler': _sampler_checks()})
    if 'thresh' not in sampler:
      raise UserError("pixelsampler (OHEMPixelSampler): 'thresh' is missing (the loss_func form "
                      "is not supported): write e.g. 'thresh': 0.7.")


def _head_mean(value: jax.Array, sample_mask: jax.Array | None) -> jax.Array:
  """The toolbox's ``loss.mean()`` of one loss's output (only unreduced outputs have a shape)."""
  if value.ndim == 3:  # Per kept pixel, zero elsewhere: the toolbox holds the kept ones only.
    return value.sum() / sample_mask.sum()
  return value.mean()


def head_loss(logits: jax.Array, labels: jax.Array, losses, *,
              sampler: Mapping | None = None) -> jax.Array:
  """One head's loss, as the toolbox's ``calculatelosses`` computes it.

  With a sampler, its mask comes from this head's own logits. Then every configured loss runs on
  the (kept) pixels, each one's output is averaged (the toolbox's ``.mean()``, which only
  matters for reduction 'none') and the results are summed. Scale factors live in the losses;
  the toolbox sums the heads with weight 1.

  Args:
    logits: float[N, H, W, K] (NHWC), the head's logits upsampled to the labels' size.
    labels: int[N, H, W].
    losses: the head's loss config (see ``check_head_losses``, which runs first).
    sampler: None or the ``pixelsampler`` config shared by all heads.

  Returns:
    Scalar in the compute dtype.
  """
  check_head_losses(losses, logits.shape[-1], sampler=sampler)
  sample_mask = None
  if sampler is not None:
    sample_mask = ohem_pixel_mask(logits, labels, **{k: v for k, v in sampler.items()
                                                     if k != 'type'})
  total = 0.0
  for entry in [losses] if isinstance(losses, Mapping) else losses:
    kwargs = {k: v for k, v in entry.items() if k != 'type'}
    value = LOSSES[entry['type']](logits, labels, sample_mask=sample_mask, **kwargs)
    total = total + _head_mean(value, sample_mask)
  return total
