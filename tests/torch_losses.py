"""sssegmentation 1.7.0's losses and OHEM pixel sampler restated in PyTorch, as the project's
reference for bisenet_jax.train.loss_functions (docs/reference.md §9.1, §9.2).

Written independently of the JAX code and in the toolbox's own structure: the valid pixels are
picked out by boolean indexing into a (pixels, classes) matrix, per-image losses loop over the
images, the Lovasz loss loops over classes, and the OHEM sampler returns the kept pixels as
(M, C) points with (M,) labels, which the losses then take as their whole input. Logits are NCHW
(or (M, C) points), labels (N, H, W) (or (M,)); ignored pixels are 255 as in this project.
Unreduced outputs (reduction 'none') come back as full maps with zeros on ignored pixels, the
layout the JAX functions use (the toolbox fails for the pixel-wise losses here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _as_points(logits: torch.Tensor, labels: torch.Tensor):
  """(N, C, H, W) and (N, H, W), or (M, C) and (M,) -> (P, C) and (P,)."""
  if logits.dim() == 2:
    return logits, labels.long()
  return logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1]), labels.reshape(-1).long()


def _finish(loss, scale_factor, lowest_loss_value):
  loss = loss * scale_factor
  if lowest_loss_value is not None:
    loss = (loss - lowest_loss_value).abs() + lowest_loss_value
  return loss


def _unreduced_map(values: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor):
  """Values of the kept pixels scattered into a zero map shaped like labels (+ classes)."""
  full = values.new_zeros((keep.numel(), *values.shape[1:]))
  full[keep] = values
  return full.reshape(*labels.shape, *values.shape[1:])


def _class_weighted(elements, onehot, class_weight, norm):
  """(elements times the class weights, the mean's denominator or None for a plain mean)."""
  if class_weight is None:
    return elements, None
  class_weight = elements.new_tensor(class_weight)
  return elements * class_weight, (onehot * class_weight).sum() if norm else None


def _reduce_and_finish(elements, denominator, reduction, keep, labels, scale_factor,
                       lowest_loss_value):
  if reduction == 'none':
    return _unreduced_map(_finish(elements, scale_factor, lowest_loss_value), keep, labels)
  if reduction == 'sum':
    loss = elements.sum()
  else:
    loss = elements.mean() if denominator is None else elements.sum() / denominator
  return _finish(loss, scale_factor, lowest_loss_value)


def cross_entropy(logits, labels, use_sigmoid=False, class_weight=None, label_smoothing=None,
                  ignore_index=255, reduction='mean', norm_loss_with_class_weight=True,
                  scale_factor=1.0, lowest_loss_value=None, weight=None):
  """CrossEntropyLoss; ``weight`` is the per-pixel weight of forward(), shaped like labels."""
  x, y = _as_points(logits, labels)
  keep = y != ignore_index
  x, y = x[keep], y[keep]
  onehot = F.one_hot(y, x.shape[1]).to(x.dtype)
  if use_sigmoid:
    elements = F.binary_cross_entropy_with_logits(x, onehot, reduction='none')
  else:
    per_pixel = F.cross_entropy(x, y, reduction='none', label_smoothing=label_smoothing or 0.0)
    elements = per_pixel[:, None] * onehot
  elements, denominator = _class_weighted(elements, onehot, class_weight,
                                          norm_loss_with_class_weight)
  if not use_sigmoid:
    elements = elements.sum(1)
  if weight is not None:
    pixel_weight = weight.reshape(-1)[keep].to(x.dtype)
    elements = elements * (pixel_weight[:, None] if use_sigmoid else pixel_weight)
  return _reduce_and_finish(elements, denominator, reduction, keep, labels, scale_factor,
                            lowest_loss_value)


def focal_loss(logits, labels, use_sigmoid=True, gamma=2.0, alpha=0.25, class_weight=None,
               reduction='mean', ignore_index=255, norm_loss_with_class_weight=True,
               scale_factor=1.0, lowest_loss_value=None):
  """FocalLoss: sigmoid (per pixel and class) or softmax (per pixel) focal loss."""
  x, y = _as_points(logits, labels)
  keep = y != ignore_index
  x, y = x[keep], y[keep]
  onehot = F.one_hot(y, x.shape[1]).to(x.dtype)
  if use_sigmoid:
    p = x.sigmoid()
    p_wrong = torch.where(onehot > 0, 1 - p, p)
    balance = torch.where(onehot > 0, alpha, 1 - alpha)
    elements = F.binary_cross_entropy_with_logits(x, onehot, reduction='none')
    elements = elements * balance * p_wrong.pow(gamma)
  else:
    p_true = F.softmax(x, dim=1).gather(1, y[:, None])[:, 0]
    per_pixel = alpha * (1 - p_true).pow(gamma) * F.cross_entropy(x, y, reduction='none')
    elements = per_pixel[:, None] * onehot
  elements, denominator = _class_weighted(elements, onehot, class_weight,
                                          norm_loss_with_class_weight)
  if not use_sigmoid:
    elements = elements.sum(1)
  return _reduce_and_finish(elements, denominator, reduction, keep, labels, scale_factor,
                            lowest_loss_value)


def _images(logits, labels):
  """The toolbox's per-image rows: (N, C, H, W) -> N images; (M, C) points -> M images."""
  if logits.dim() == 2:
    return [(logits[i][:, None], labels[i].reshape(1).long()) for i in range(logits.shape[0])]
  return [(logits[i].reshape(logits.shape[1], -1), labels[i].reshape(-1).long())
          for i in range(logits.shape[0])]


def dice_loss(logits, labels, use_sigmoid=True, activate=True, reduction='mean',
              naive_dice=False, eps=1e-3, scale_factor=1.0, ignore_index=255,
              lowest_loss_value=None):
  """DiceLoss: one score per image (per point for (M, C) input) over all classes."""
  num_classes = logits.shape[1]
  if activate and use_sigmoid:
    logits = logits.sigmoid()
  elif activate and num_classes > 1:
    logits = logits.softmax(dim=1)
  losses = []
  for probs, y in _images(logits, labels):  # probs: (C, P), y: (P,)
    valid = (y != ignore_index).to(probs.dtype)
    target = F.one_hot(y.clamp(0, num_classes), num_classes + 1)[:, :num_classes].T
    probs, target = probs * valid, target.to(probs.dtype) * valid
    overlap = (probs * target).sum()
    if naive_dice:
      dice = (2 * overlap + eps) / (probs.sum() + target.sum() + eps)
    else:
      dice = 2 * overlap / ((probs * probs).sum() + eps + (target * target).sum() + eps)
    losses.append(1 - dice)
  loss = torch.stack(losses)
  if reduction == 'mean':
    loss = loss.mean()
  elif reduction == 'sum':
    loss = loss.sum()
  return _finish(loss, scale_factor, lowest_loss_value)


def lovasz_gradient(sorted_target: torch.Tensor) -> torch.Tensor:
  """Jaccard-loss increments along targets sorted by decreasing error."""
  total = sorted_target.sum()
  jaccard = 1 - (total - sorted_target.cumsum(0)) / (total + (1 - sorted_target).cumsum(0))
  return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _softmax_lovasz_group(probs, y, classes, class_weight):
  """probs: (P, C) valid pixels only; y: (P,)."""
  num_classes = probs.shape[1]
  class_ids = range(num_classes) if classes in ('all', 'present') else sorted(set(classes))
  losses, weights = [], []
  for c in class_ids:
    fg = (y == c).to(probs.dtype)
    if classes == 'present' and fg.sum() == 0:
      continue
    errors, order = (fg - probs[:, c]).abs().sort(descending=True)
    losses.append(torch.dot(errors, lovasz_gradient(fg[order])))
    weights.append(1.0 if class_weight is None else class_weight[c])
  if not losses:
    raise RuntimeError('no class to average (the toolbox fails in torch.stack)')
  weights = probs.new_tensor(weights)
  return (torch.stack(losses) * weights).sum() / weights.sum()


def _sigmoid_lovasz_group(probs, y, classes, class_weight, ignore_index):
  num_classes = probs.shape[1]
  target = F.one_hot(y, num_classes).to(probs.dtype)
  if classes == 'present':
    class_ids = [c for c in range(num_classes) if target[:, c].sum() > 0]
  elif classes == 'all':
    class_ids = list(range(num_classes))
  else:
    class_ids = sorted(set(classes))
  class_ids = [c for c in class_ids if c != ignore_index]
  errors = 1 - probs[:, class_ids] * (2 * target[:, class_ids] - 1)
  if class_weight is not None:
    errors = errors * probs.new_tensor(class_weight)[class_ids]
  errors, order = errors.reshape(-1).sort(descending=True)
  return torch.dot(F.relu(errors), lovasz_gradient(target[:, class_ids].reshape(-1)[order]))


def lovasz_loss(logits, labels, use_sigmoid=False, classes='present', per_image=False,
                reduction='mean', class_weight=None, scale_factor=1.0, ignore_index=255,
                lowest_loss_value=None):
  """LovaszLoss over the batch's valid pixels, or per image (per point for (M, C) input)."""
  num_classes = logits.shape[1]
  if use_sigmoid:
    probs = logits.sigmoid()
  else:
    probs = logits.softmax(dim=1) if num_classes > 1 else logits

  def group(group_probs, group_labels):
    x, y = _as_points(group_probs, group_labels)
    keep = y != ignore_index
    if use_sigmoid:
      return _sigmoid_lovasz_group(x[keep], y[keep], classes, class_weight, ignore_index)
    return _softmax_lovasz_group(x[keep], y[keep], classes, class_weight)

  if not per_image:
    return _finish(group(probs, labels), scale_factor, lowest_loss_value)
  loss = torch.stack([group(probs[i:i + 1], labels[i:i + 1]) for i in range(probs.shape[0])])
  if reduction == 'mean':
    loss = loss.mean()
  elif reduction == 'sum':
    loss = loss.sum()
  return _finish(loss, scale_factor, lowest_loss_value)


LOSSES = {'CrossEntropyLoss': cross_entropy, 'DiceLoss': dice_loss, 'FocalLoss': focal_loss,
          'LovaszLoss': lovasz_loss}


def ohem_kept(logits, labels, thresh, min_kept_per_image=100000, ignore_index=255):
  """The OHEMPixelSampler's (thresh form) kept pixels: bool (N, H, W)."""
  labels = labels.long()
  valid = labels != ignore_index
  with torch.no_grad():
    probs = logits.softmax(dim=1).gather(1, labels.masked_fill(~valid, 0)[:, None])[:, 0]
    ascending = probs[valid].sort().values
    threshold = thresh
    if ascending.numel() > 0:
      kth = ascending[min(min_kept_per_image * labels.shape[0], ascending.numel() - 1)]
      threshold = max(kth.item(), thresh)
    return valid & (probs < threshold)


def ohem_sample(logits, labels, **sampler):
  """The sampler's output: kept logits (M, C), with gradient, and their labels (M,)."""
  kept = ohem_kept(logits, labels, **sampler)
  return logits.permute(0, 2, 3, 1)[kept], labels.long()[kept]


def head_loss(logits, labels, losses, sampler=None):
  """calculatelosses for one head: sample, run each loss, take .mean() of each, sum."""
  if sampler is not None:
    sampler = {k: v for k, v in sampler.items() if k != 'type'}
    logits, labels = ohem_sample(logits, labels, **sampler)
  total = 0
  for entry in [losses] if isinstance(losses, dict) else losses:
    kwargs = {k: v for k, v in entry.items() if k != 'type'}
    total = total + LOSSES[entry['type']](logits, labels, **kwargs).mean()
  return total
