"""Segmentation losses: per-pixel softmax cross-entropy with an ignore label, main + aux heads.

Matches sssegmentation's ``CrossEntropyLoss(reduction='mean', ignore_index=...)``
(docs/reference.md §1.9, §4.4): each head's logits are upsampled bilinearly (align_corners=False)
to the label size, get their own mean cross-entropy over the non-ignored pixels, and the heads'
losses are summed with weight 1.0. This project marks ignored pixels with 255 (the reference uses
-100).

The upsampled logits are the largest tensors of a training step (19 x 1024 x 1024 per image and
head), so ``upsampled_cross_entropy`` computes upsample + cross-entropy with a hand-written
backward pass in a class-planes layout; ``cross_entropy`` is the plain per-pixel loss.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from bisenet_jax.models.layers import at_least_float32, linear_resize_matrix, resize_bilinear
from bisenet_jax.specs import ObjectiveSpec
from bisenet_jax.train import loss_functions


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = 255) -> jax.Array:
  """Mean softmax cross-entropy over the pixels whose label is not ``ignore_label``.

  Same value as ``F.cross_entropy(logits_nchw, labels, ignore_index=ignore_label)``: NaN when
  every pixel is ignored. Computed in float32 whatever the logits' dtype. The per-pixel loss is
  ``logsumexp(logits) - logits[label]`` (optax's integer-label form), so no one-hot tensor of
  the logits' size is built in the forward pass.

  Args:
    logits: float[N, H, W, K] (NHWC), any float dtype.
    labels: int[N, H, W] class ids in [0, K), or ``ignore_label``. Any other value gives a NaN
      loss (PyTorch raises instead), so a label-mapping bug cannot train silently.
    ignore_label: label value excluded from the loss and from the mean's denominator.

  Returns:
    float32 scalar.
  """
  labels = labels.astype(jnp.int32)
  valid = labels != ignore_label
  # Ignored pixels get a stand-in class 0; `where` (not a multiply) then drops their loss and
  # gives them an exactly zero gradient.
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(at_least_float32(logits.dtype)), jnp.where(valid, labels, 0))
  return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.sum(valid)


def upsampled_cross_entropy(logits: jax.Array, labels: jax.Array,
                            ignore_label: int = 255) -> jax.Array:
  """``cross_entropy(resize_bilinear(logits, labels' size), labels)``, computed faster.

  Same value and gradient as the composition (to float rounding), with two changes of method:

  * Layout: the upsampled logits live as class planes (N, K, H, W), so the softmax over the 19
    classes is an element-wise pass over 19 planes instead of a reduction over a short minor
    axis.
  * The bilinear upsample is two matmuls with PyTorch's interpolation matrices (exact zeros off
    the two taps), whose backward pass is two matmuls with their transposes instead of a
    scatter-add. The backward recomputes the upsampled logits rather than keeping them.

  Args:
    logits: float[N, h, w, K] (NHWC) at the head's stride, any float dtype (computed in float32,
      or float64 for float64 logits).
    labels: int[N, H, W] class ids in [0, K) or ``ignore_label``; (H, W) is the upsampling
      target. Any other value gives a NaN loss, as in ``cross_entropy``.
    ignore_label: label value excluded from the loss and from the mean's denominator.

  Returns:
    float32 scalar; NaN when every pixel is ignored.
  """
  logits = logits.astype(at_least_float32(logits.dtype))
  total = _upsampled_cross_entropy_sum(logits, labels, ignore_label)
  return total / jnp.sum(labels != ignore_label)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _upsampled_cross_entropy_sum(logits, labels, ignore_label):
  return _upsampled_ce_fwd(logits, labels, ignore_label)[0]


def _resize_matrices(logits: jax.Array, size: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """The row (H x h) and column (W x w) interpolation matrices, in the logits' dtype."""
  return tuple(jnp.asarray(linear_resize_matrix(n, out), logits.dtype)
               for n, out in zip(logits.shape[1:3], size))


def _class_planes(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """float[N, h, w, K] -> bilinearly upsampled float[N, K, H, W]."""
  rows, cols = _resize_matrices(logits, size)
  # Rows first, on the small tensor; the last matmul contracts the minor axis of its operand.
  upsampled_rows = jnp.einsum('Hh,nhwk->nkHw', rows, logits)
  return jnp.einsum('nkHw,Ww->nkHW', upsampled_rows, cols)


def _upsampled_ce_fwd(logits, labels, ignore_label):
  labels = labels.astype(jnp.int32)
  planes = _class_planes(logits, labels.shape[1:3])
  # Per-class planes: max / sum / select across planes are element-wise passes.
  classes = [planes[:, k] for k in range(planes.shape[1])]
  peak = functools.reduce(jnp.maximum, classes)
  log_normalizer = jnp.log(sum(jnp.exp(plane - peak) for plane in classes)) + peak
  label_logit = sum(jnp.where(labels == k, plane, 0.0) for k, plane in enumerate(classes))
  # A label that is neither a class nor ignored poisons the loss (see cross_entropy).
  in_range = (labels >= 0) & (labels < len(classes))
  label_logit = jnp.where(in_range, label_logit, jnp.nan)
  total = jnp.sum(jnp.where(labels != ignore_label, log_normalizer - label_logit, 0.0))
  return total, (logits, labels, log_normalizer)


def _upsampled_ce_bwd(ignore_label, residuals, grad_total):
  logits, labels, log_normalizer = residuals
  planes = _class_planes(logits, labels.shape[1:3])
  one_hot = labels[:, None] == jnp.arange(planes.shape[1])[:, None, None]
  # d(sum of CE)/d(upsampled logits) = softmax - one_hot on valid pixels, 0 on ignored ones.
  grad_planes = jnp.where((labels != ignore_label)[:, None],
                          jnp.exp(planes - log_normalizer[:, None]) - one_hot, 0.0) * grad_total
  rows, cols = _resize_matrices(logits, labels.shape[1:3])
  # Transposed interpolation, minor (width) axis first so the big matmul needs no transpose.
  grad_rows = jnp.einsum('nkHW,Ww->nkHw', grad_planes, cols)
  return jnp.einsum('nkHw,Hh->nhwk', grad_rows, rows), None


_upsampled_cross_entropy_sum.defvjp(_upsampled_ce_fwd, _upsampled_ce_bwd)


PLAIN_CROSS_ENTROPY = ({'type': 'CrossEntropyLoss'},)


def segmentation_losses(outputs: Sequence[jax.Array], labels: jax.Array, heads: Sequence[str],
                        ignore_label: int = 255) -> dict[str, jax.Array]:
  """Plain cross-entropy on every head, summed: the reference objective of BiSeNetV1 and V2.

  Args:
    outputs: each head's logits float[N, h_i, w_i, K] (NHWC) at its own stride, the main head
      first (e.g. BiSeNetV1's main, c8 and c16 heads at strides 8, 8, 16).
    labels: int[N, H, W] (uint8 in this project) with ``ignore_label`` for ignored pixels; (H, W)
      is the size of the input image batch.
    heads: the heads' loss names, in ``outputs`` order.
    ignore_label: label value excluded from every loss.

  Returns:
    ``{head: loss, ..., 'loss': their sum}`` (weight 1.0 each), float32 scalars.
  """
  losses = {name: upsampled_cross_entropy(logits, labels, ignore_label)
            for name, logits in zip(heads, outputs, strict=True)}
  losses['loss'] = sum(losses.values())
  return losses


def make_objective(objective: ObjectiveSpec) -> Callable:
  """The training objective of ``objective``: ``(outputs, labels) -> {head: loss, 'loss': sum}``.

  Plain cross-entropy on every head without a sampler (BiSeNetV1's and V2's reference) is
  ``segmentation_losses``, the fast form. Any other table runs sssegmentation's losses
  (``loss_functions.head_loss``, with the OHEM sampler if any) on each head's logits upsampled
  bilinearly to the labels' size, as the toolbox does, and sums the heads with weight 1.
  """
  heads = tuple(head for head, _ in objective.losses)
  if objective.sampler is None and all(
      tuple(table) == PLAIN_CROSS_ENTROPY for _, table in objective.losses):
    return functools.partial(segmentation_losses, heads=heads)

  def losses_of(outputs: Sequence[jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    losses = {}
    for (head, table), logits in zip(objective.losses, outputs, strict=True):
      upsampled = resize_bilinear(logits.astype(at_least_float32(logits.dtype)),
                                  labels.shape[1:3])
      losses[head] = loss_functions.head_loss(upsampled, labels.astype(jnp.int32), table,
                                              sampler=objective.sampler)
    losses['loss'] = sum(losses.values())
    return losses

  return losses_of
