"""Segmentation losses: per-pixel softmax cross-entropy with an ignore label, main + aux heads.

Matches sssegmentation's ``CrossEntropyLoss(reduction='mean', ignore_index=...)``
(docs/reference.md §1.9, §4.4): each head's logits are upsampled bilinearly (align_corners=False)
to the label size, get their own mean cross-entropy over the non-ignored pixels, and the heads'
losses are summed with weight 1.0. This project marks ignored pixels with 255 (the reference uses
-100).

The mean is the reference's under DistributedDataParallel: each of its ``replicas`` GPUs
averages over its own images' valid pixels, and averaging the gradients averages those means
(``replica_mean``; 8 GPUs in every recipe). So the global batch is split into ``replicas``
groups of consecutive rows, whatever devices hold them, and the loss is the mean of the groups'
means: the same value on any device count.

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


def replica_groups(array: jax.Array, replicas: int) -> jax.Array:
  """[N, ...] -> [replicas, N / replicas, ...]: group g is rows [g N / R, (g + 1) N / R), the
  images the reference's GPU g held (the global batch is the replicas' batches in order)."""
  if array.shape[0] % replicas:
    raise ValueError(f'a batch of {array.shape[0]} does not split into {replicas} replicas')
  return array.reshape(replicas, array.shape[0] // replicas, *array.shape[1:])


def replica_mean(sums: jax.Array, counts: jax.Array, replicas: int = 1) -> jax.Array:
  """The mean over ``replicas`` groups of each group's mean: per-image loss ``sums`` [N] over
  per-image element ``counts`` [N], added up within each group first. NaN when a group has no
  valid element, as on the reference's GPU."""
  group_sums = replica_groups(sums, replicas).sum(axis=1)
  group_counts = replica_groups(counts, replicas).sum(axis=1)
  return jnp.mean(group_sums / group_counts)


def upsampled_cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = 255,
                            use_sigmoid: bool = False, replicas: int = 1) -> jax.Array:
  """``cross_entropy(resize_bilinear(logits, labels' size), labels)``, computed faster, as the
  mean over ``replicas`` groups of images of each group's mean (``replica_mean``).

  With ``use_sigmoid``, the toolbox's sigmoid form instead (``loss_functions.cross_entropy(...,
  use_sigmoid=True)``, Fast-SCNN's loss): every class a binary cross-entropy against the one-hot
  label, the mean over valid pixels x classes.

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
    replicas: the groups of rows whose means are averaged (N must be a multiple of it).

  Returns:
    float32 scalar; NaN when every pixel of a group is ignored.
  """
  logits = logits.astype(at_least_float32(logits.dtype))
  sums = _upsampled_cross_entropy_sums(logits, labels, ignore_label, use_sigmoid)
  elements = jnp.sum(labels != ignore_label, axis=(1, 2)) * (logits.shape[-1] if use_sigmoid
                                                             else 1)
  return replica_mean(sums, elements, replicas)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _upsampled_cross_entropy_sums(logits, labels, ignore_label, use_sigmoid):
  """float[N]: each image's summed loss over its valid pixels."""
  return _upsampled_ce_fwd(logits, labels, ignore_label, use_sigmoid)[0]


def _resize_matrices(logits: jax.Array, size: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """The row (H x h) and column (W x w) interpolation matrices, in the logits' dtype."""
  return tuple(jnp.asarray(linear_resize_matrix(n, out, logits.dtype), logits.dtype)
               for n, out in zip(logits.shape[1:3], size))


def _class_planes(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """float[N, h, w, K] -> bilinearly upsampled float[N, K, H, W]."""
  rows, cols = _resize_matrices(logits, size)
  # Rows first, on the small tensor; the last matmul contracts the minor axis of its operand.
  upsampled_rows = jnp.einsum('Hh,nhwk->nkHw', rows, logits)
  return jnp.einsum('nkHw,Ww->nkHW', upsampled_rows, cols)


def _upsampled_ce_fwd(logits, labels, ignore_label, use_sigmoid):
  labels = labels.astype(jnp.int32)
  planes = _class_planes(logits, labels.shape[1:3])
  # Per-class planes: max / sum / select across planes are element-wise passes.
  classes = [planes[:, k] for k in range(planes.shape[1])]
  if use_sigmoid:
    # sum_k BCE(x_k, onehot_k) = sum_k softplus(x_k) - x_label.
    log_normalizer = sum(jnp.logaddexp(0.0, plane) for plane in classes)
  else:
    peak = functools.reduce(jnp.maximum, classes)
    log_normalizer = jnp.log(sum(jnp.exp(plane - peak) for plane in classes)) + peak
  label_logit = sum(jnp.where(labels == k, plane, 0.0) for k, plane in enumerate(classes))
  # A label that is neither a class nor ignored poisons the loss (see cross_entropy).
  in_range = (labels >= 0) & (labels < len(classes))
  label_logit = jnp.where(in_range, label_logit, jnp.nan)
  sums = jnp.sum(jnp.where(labels != ignore_label, log_normalizer - label_logit, 0.0),
                 axis=(1, 2))
  return sums, (logits, labels, log_normalizer)


def _upsampled_ce_bwd(ignore_label, use_sigmoid, residuals, grad_sums):
  logits, labels, log_normalizer = residuals
  planes = _class_planes(logits, labels.shape[1:3])
  one_hot = labels[:, None] == jnp.arange(planes.shape[1])[:, None, None]
  # d(sum of CE)/d(upsampled logits) = softmax (sigmoid) - one_hot on valid pixels, 0 on ignored.
  probabilities = (jax.nn.sigmoid(planes) if use_sigmoid
                   else jnp.exp(planes - log_normalizer[:, None]))
  grad_planes = jnp.where((labels != ignore_label)[:, None], probabilities - one_hot,
                          0.0) * grad_sums[:, None, None, None]
  rows, cols = _resize_matrices(logits, labels.shape[1:3])
  # Transposed interpolation, minor (width) axis first so the big matmul needs no transpose.
  grad_rows = jnp.einsum('nkHW,Ww->nkHw', grad_planes, cols)
  return jnp.einsum('nkHw,Hh->nhwk', grad_rows, rows), None


_upsampled_cross_entropy_sums.defvjp(_upsampled_ce_fwd, _upsampled_ce_bwd)


# The arguments a head's CrossEntropyLoss may have (with the toolbox's defaults here) for the
# fused form to compute it.
_FUSED_ARGUMENTS = {'type': 'CrossEntropyLoss', 'use_sigmoid': False, 'scale_factor': 1.0,
                    'reduction': 'mean', 'ignore_index': 255}


def fused_head_loss(table) -> tuple[bool, float] | None:
  """``(use_sigmoid, scale_factor)`` when a head's loss table is one plain CrossEntropyLoss
  (softmax or sigmoid, scaled; no class weights, smoothing or floor), else None."""
  if len(table) != 1 or table[0].get('type') != 'CrossEntropyLoss':
    return None
  loss = {**_FUSED_ARGUMENTS, **table[0]}
  if loss.keys() != _FUSED_ARGUMENTS.keys() or (loss['reduction'], loss['ignore_index']) != (
      'mean', 255):
    return None
  return bool(loss['use_sigmoid']), float(loss['scale_factor'])


def segmentation_losses(outputs: Sequence[jax.Array], labels: jax.Array, heads: Sequence[str],
                        *, use_sigmoid: bool = False,
                        scale_factors: Sequence[float] | None = None,
                        ignore_label: int = 255, replicas: int = 1) -> dict[str, jax.Array]:
  """Cross-entropy on every head, scaled and summed: the reference objective of all three
  networks (softmax, weight 1: BiSeNetV1 and V2; sigmoid, auxiliary heads 0.4: Fast-SCNN).

  Args:
    outputs: each head's logits float[N, h_i, w_i, K] (NHWC) at its own stride, the main head
      first (e.g. BiSeNetV1's main, c8 and c16 heads at strides 8, 8, 16).
    labels: int[N, H, W] (uint8 in this project) with ``ignore_label`` for ignored pixels; (H, W)
      is the size of the input image batch.
    heads: the heads' loss names, in ``outputs`` order.
    use_sigmoid: the toolbox's sigmoid cross-entropy on every head instead of the softmax one.
    scale_factors: each head's weight (default 1.0).
    ignore_label: label value excluded from every loss.
    replicas: every head's loss is the mean of this many groups' means (``replica_mean``).

  Returns:
    ``{head: loss, ..., 'loss': their sum}``, float32 scalars (each head's loss scaled).
  """
  scale_factors = scale_factors or (1.0,) * len(heads)
  losses = {name: scale * upsampled_cross_entropy(logits, labels, ignore_label, use_sigmoid,
                                                  replicas)
            for name, scale, logits in zip(heads, scale_factors, outputs, strict=True)}
  losses['loss'] = sum(losses.values())
  return losses


def make_objective(objective: ObjectiveSpec) -> Callable:
  """The training objective of ``objective``: ``(outputs, labels) -> {head: loss, 'loss': sum}``.

  Every loss is the reference's under DistributedDataParallel with ``objective.replicas`` GPUs:
  computed on each replica's images (consecutive rows of the batch) alone, then averaged over
  the replicas, as averaging the GPUs' gradients averages their losses. For the toolbox's table
  that also means the OHEM threshold ranks each replica's own pixels (and keeps at least
  ``min_kept_per_image`` times its own image count) and a batch Lovasz sorts its own errors.
  Groups do not depend on the devices, so the value is the same on any mesh; where the replicas
  are a multiple of the devices, every group lies on one device and nothing is gathered.

  One plain cross-entropy per head (softmax on all or sigmoid on all, any weights) without a
  sampler, which is every network's reference, is ``segmentation_losses``, the fused form. Any
  other table runs sssegmentation's losses (``loss_functions.head_loss``, with the OHEM sampler
  if any) on each head's logits upsampled bilinearly to the labels' size, as the toolbox does,
  and sums the heads with weight 1 (each loss carries its own ``scale_factor``).
  """
  heads = tuple(head for head, _ in objective.losses)
  fused = [fused_head_loss(table) for _, table in objective.losses]
  if (objective.sampler is None and None not in fused
      and len({use_sigmoid for use_sigmoid, _ in fused}) == 1):
    return functools.partial(segmentation_losses, heads=heads, use_sigmoid=fused[0][0],
                             scale_factors=tuple(scale for _, scale in fused),
                             replicas=objective.replicas)

  def replica_losses(outputs: Sequence[jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    losses = {}
    for (head, table), logits in zip(objective.losses, outputs, strict=True):
      upsampled = resize_bilinear(logits.astype(at_least_float32(logits.dtype)),
                                  labels.shape[1:3])
      losses[head] = loss_functions.head_loss(upsampled, labels.astype(jnp.int32), table,
                                              sampler=objective.sampler)
    losses['loss'] = sum(losses.values())
    return losses

  def losses_of(outputs: Sequence[jax.Array], labels: jax.Array) -> dict[str, jax.Array]:
    grouped = functools.partial(replica_groups, replicas=objective.replicas)
    per_replica = jax.vmap(replica_losses)(tuple(map(grouped, outputs)), grouped(labels))
    return {name: jnp.mean(value) for name, value in per_replica.items()}

  return losses_of
