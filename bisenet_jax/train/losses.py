"""Segmentation losses: per-pixel softmax cross-entropy with an ignore label, main + aux heads.

Matches sssegmentation's ``CrossEntropyLoss(reduction='mean', ignore_index=...)`` (REFERENCE.md
§1.9, §4.4): each head's logits are upsampled bilinearly (align_corners=False) to the label size,
get their own mean cross-entropy over the non-ignored pixels, and the three losses are summed
with weight 1.0. This project marks ignored pixels with 255 (the reference uses -100).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from bisenet_jax.models.layers import at_least_float32, resize_bilinear

LOSS_NAMES = ('loss_cls', 'loss_aux1', 'loss_aux2')


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
  # Ignored pixels get a placeholder class 0; `where` (not a multiply) then drops their loss and
  # gives them an exactly zero gradient.
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(at_least_float32(logits.dtype)), jnp.where(valid, labels, 0))
  return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.sum(valid)


def segmentation_losses(outputs: Sequence[jax.Array], labels: jax.Array,
                        ignore_label: int = 255) -> dict[str, jax.Array]:
  """The reference training objective for (main, aux1, aux2) logits.

  Args:
    outputs: ``(logits, aux8, aux16)``: float[N, h_i, w_i, K] (NHWC) at their own strides (8, 8,
      16 for BiSeNetV1): the main head on the FFM output, the aux heads on c8 and c16.
    labels: int[N, H, W] (uint8 in this project) with ``ignore_label`` for ignored pixels; (H, W)
      is the size of the input image batch.
    ignore_label: label value excluded from every loss.

  Returns:
    ``{'loss_cls', 'loss_aux1', 'loss_aux2', 'loss'}``: float32 scalars; ``loss`` is the sum of
    the other three (weight 1.0 each).
  """
  size = labels.shape[1:3]
  losses = {}
  for name, logits in zip(LOSS_NAMES, outputs, strict=True):
    # Upsample in float32: resize_bilinear interpolates in the input's dtype, and bf16 would
    # round the interpolation weights themselves.
    upsampled = resize_bilinear(logits.astype(at_least_float32(logits.dtype)), size)
    losses[name] = cross_entropy(upsampled, labels, ignore_label)
  losses['loss'] = sum(losses.values())
  return losses
