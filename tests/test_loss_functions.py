"""Tests of bisenet_jax.train.loss_functions against the PyTorch restatement of sssegmentation's
losses and OHEM sampler in torch_losses.py (docs/reference.md §9.1, §9.2).

Values are compared in float64 on both sides, to 1e-6 relative: small batches (2 x 5 x 6 pixels,
5 classes, about 30 % ignored) so that every option runs in well under a minute.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bisenet_jax.errors import UserError
from bisenet_jax.train import loss_functions as lf
import torch_losses

N, H, W, K = 2, 5, 6, 5
IGNORE = 255
CLASS_WEIGHT = [0.3, 1.7, 0.8, 1.2, 0.5]
JAX_LOSSES = {'CrossEntropyLoss': lf.cross_entropy, 'DiceLoss': lf.dice_loss,
              'FocalLoss': lf.focal_loss, 'LovaszLoss': lf.lovasz_loss}


@pytest.fixture(autouse=True)
def float64():
  with jax.enable_x64(True):
    yield


def make_inputs(seed: int, ignore: int = IGNORE, ignore_fraction: float = 0.3):
  """float64 logits [N, H, W, K] of std 2 and int32 labels with ``ignore`` on some pixels."""
  rng = np.random.default_rng(seed)
  logits = 2 * rng.normal(size=(N, H, W, K))
  labels = rng.integers(0, K, size=(N, H, W)).astype(np.int32)
  labels[rng.random((N, H, W)) < ignore_fraction] = ignore
  return logits, labels


def torch_inputs(logits, labels, requires_grad=False):
  nchw = torch.tensor(np.asarray(logits)).permute(0, 3, 1, 2).contiguous()
  return nchw.requires_grad_(requires_grad), torch.tensor(np.asarray(labels), dtype=torch.long)


def close(got, want, rtol=1e-6):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=1e-12)


def run_jax(name, logits, labels, **kwargs):
  return jax.jit(functools.partial(JAX_LOSSES[name], **kwargs))(logits, labels)


CASES = [
    ('CrossEntropyLoss', {}),
    ('CrossEntropyLoss', {'class_weight': CLASS_WEIGHT}),
    ('CrossEntropyLoss', {'label_smoothing': 0.1}),
    ('CrossEntropyLoss', {'class_weight': CLASS_WEIGHT, 'label_smoothing': 0.2}),
    ('CrossEntropyLoss', {'class_weight': CLASS_WEIGHT, 'norm_loss_with_class_weight': False}),
    ('CrossEntropyLoss', {'class_weight': CLASS_WEIGHT, 'reduction': 'sum'}),
    ('CrossEntropyLoss', {'use_sigmoid': True}),
    ('CrossEntropyLoss', {'use_sigmoid': True, 'class_weight': CLASS_WEIGHT}),
    ('CrossEntropyLoss', {'scale_factor': 0.4, 'lowest_loss_value': 3.0}),
    ('CrossEntropyLoss', {'ignore_index': 2}),
    ('FocalLoss', {}),
    ('FocalLoss', {'class_weight': CLASS_WEIGHT}),
    ('FocalLoss', {'class_weight': CLASS_WEIGHT, 'norm_loss_with_class_weight': False}),
    ('FocalLoss', {'gamma': 1.5, 'alpha': 0.6, 'reduction': 'sum', 'scale_factor': 2.0}),
    ('FocalLoss', {'use_sigmoid': False}),
    ('FocalLoss', {'use_sigmoid': False, 'class_weight': CLASS_WEIGHT, 'gamma': 3.0}),
    ('DiceLoss', {}),
    ('DiceLoss', {'naive_dice': True, 'eps': 0.1}),
    ('DiceLoss', {'use_sigmoid': False}),
    ('DiceLoss', {'activate': False, 'reduction': 'sum'}),
    ('DiceLoss', {'ignore_index': 0, 'lowest_loss_value': 0.9}),
    ('LovaszLoss', {}),
    ('LovaszLoss', {'classes': 'all'}),
    ('LovaszLoss', {'classes': [0, 2, 3]}),
    ('LovaszLoss', {'per_image': True, 'class_weight': CLASS_WEIGHT}),
    ('LovaszLoss', {'per_image': True, 'classes': 'all', 'reduction': 'sum'}),
    ('LovaszLoss', {'use_sigmoid': True}),
    ('LovaszLoss', {'use_sigmoid': True, 'classes': 'all', 'per_image': True}),
    ('LovaszLoss', {'use_sigmoid': True, 'classes': [1, 4], 'class_weight': CLASS_WEIGHT}),
    ('LovaszLoss', {'use_sigmoid': True, 'classes': [0, 1, 2, 3, 4],  # ReLU matters.
                    'class_weight': [1.0, -0.5, 0.7, 1.3, -0.2]}),
    ('LovaszLoss', {'use_sigmoid': True, 'ignore_index': 3, 'classes': 'all'}),
    ('LovaszLoss', {'classes': 'all', 'ignore_index': 3, 'scale_factor': 0.5}),
]


def case_id(case):
  name, kwargs = case
  return name + ''.join(f'-{k}={v}' for k, v in kwargs.items() if k != 'class_weight') + (
      '-weighted' if 'class_weight' in kwargs else '')


@pytest.mark.parametrize('case', CASES, ids=case_id)
def test_loss_matches_torch(case):
  name, kwargs = case
  logits, labels = make_inputs(0, ignore=kwargs.get('ignore_index', IGNORE))
  got = run_jax(name, logits, labels, **kwargs)
  want = torch_losses.LOSSES[name](*torch_inputs(logits, labels), **kwargs)
  assert got.dtype == jnp.float64
  close(got, want.item())


@pytest.mark.parametrize('name, kwargs', [
    ('CrossEntropyLoss', {'class_weight': CLASS_WEIGHT}),
    ('CrossEntropyLoss', {'use_sigmoid': True, 'scale_factor': 0.5, 'lowest_loss_value': 3.0}),
    ('FocalLoss', {}),
    ('FocalLoss', {'use_sigmoid': False}),
    ('DiceLoss', {}),
    ('LovaszLoss', {'per_image': True, 'lowest_loss_value': 0.9}),
])
def test_unreduced_losses_match_torch(name, kwargs):
  logits, labels = make_inputs(1)
  got = run_jax(name, logits, labels, reduction='none', **kwargs)
  want = torch_losses.LOSSES[name](*torch_inputs(logits, labels), reduction='none', **kwargs)
  assert got.shape == want.shape
  close(got, want.numpy())


def test_pixel_weight_scales_pixels_but_not_the_denominator():
  logits, labels = make_inputs(2)
  weight = np.random.default_rng(2).random((N, H, W))
  for kwargs in ({}, {'class_weight': CLASS_WEIGHT}, {'use_sigmoid': True}):
    got = lf.cross_entropy(logits, labels, pixel_weight=weight, **kwargs)
    want = torch_losses.cross_entropy(*torch_inputs(logits, labels), weight=torch.tensor(weight),
                                      **kwargs)
    close(got, want.item())
  unweighted = lf.cross_entropy(logits, labels)
  close(lf.cross_entropy(logits, labels, pixel_weight=np.full((N, H, W), 2.0)), 2 * unweighted)


def test_label_smoothing_is_not_weighted_like_pytorch_cross_entropy():
  """The toolbox smooths without class weights and then weights by the label's class."""
  logits, labels = make_inputs(3)
  x, y = torch_inputs(logits, labels)
  got = float(lf.cross_entropy(logits, labels, class_weight=CLASS_WEIGHT, label_smoothing=0.2))
  pytorch = torch.nn.functional.cross_entropy(x, y, weight=torch.tensor(CLASS_WEIGHT,
                                              dtype=torch.float64), ignore_index=IGNORE,
                                              label_smoothing=0.2).item()
  assert abs(got - pytorch) > 1e-3
  no_smoothing = torch.nn.functional.cross_entropy(
      x, y, weight=torch.tensor(CLASS_WEIGHT, dtype=torch.float64), ignore_index=IGNORE).item()
  close(lf.cross_entropy(logits, labels, class_weight=CLASS_WEIGHT), no_smoothing)


OHEM_SETTINGS = [
    (0.7, 2),    # Many pixels below 0.7: thresh decides.
    (0.05, 2),   # Fewer than k = 4 below 0.05: the k + 1-th smallest probability decides.
    (0.3, 10),   # k = 20 above the count below 0.3.
    (0.7, 1000),  # k above the count of valid pixels: all but the most confident one.
]


@pytest.mark.parametrize('thresh, min_kept', OHEM_SETTINGS)
def test_ohem_mask_matches_torch(thresh, min_kept):
  logits, labels = make_inputs(4)
  got = jax.jit(functools.partial(lf.ohem_pixel_mask, thresh=thresh,
                                  min_kept_per_image=min_kept))(logits, labels)
  want = torch_losses.ohem_kept(*torch_inputs(logits, labels), thresh, min_kept)
  np.testing.assert_array_equal(np.asarray(got), want.numpy())


def test_ohem_rule():
  logits, labels = make_inputs(5)
  valid = labels != IGNORE
  probs = np.asarray(jax.nn.softmax(logits))
  label_probs = np.take_along_axis(probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  ranked = np.sort(label_probs[valid])

  def below(threshold):
    return valid & (label_probs < threshold)

  def kept(thresh, min_kept):
    return np.asarray(lf.ohem_pixel_mask(logits, labels, thresh=thresh,
                                         min_kept_per_image=min_kept))

  # Enough pixels below thresh: exactly those are kept.
  np.testing.assert_array_equal(kept(0.9, 2), below(0.9))
  assert below(0.9).sum() > 2 * N
  # Fewer than k = 2 * min_kept below thresh: the k smallest probabilities are kept.
  assert below(0.01).sum() < 2 * 6
  np.testing.assert_array_equal(kept(0.01, 6), below(ranked[12]))
  assert kept(0.01, 6).sum() == 12
  # k beyond the valid pixels: every valid pixel but the most confident one.
  assert kept(0.5, 10**6).sum() == valid.sum() - 1
  assert not kept(0.5, 10**6)[label_probs == ranked[-1]].any()
  # Nothing valid: nothing kept.
  none_valid = lf.ohem_pixel_mask(logits, np.full_like(labels, IGNORE), thresh=0.7)
  assert not np.asarray(none_valid).any()


def test_ohem_ties_at_the_kth_probability_are_all_dropped():
  """Pixels whose probability equals the (k+1)-th smallest are not kept, however many."""
  logits = np.zeros((1, 2, 4, K))
  logits[0, 0, :, 0] = [-3.0, -2.0, 1.0, 1.0]  # Row 1 stays zero: probability exactly 1/K.
  labels = np.zeros((1, 2, 4), np.int32)
  got = np.asarray(lf.ohem_pixel_mask(logits, labels, thresh=0.1, min_kept_per_image=3))
  want = torch_losses.ohem_kept(*torch_inputs(logits, labels), 0.1, 3).numpy()
  np.testing.assert_array_equal(got, want)
  # The 4th smallest probability is 1/K, shared by four pixels: only the two below it remain,
  # fewer than k = 3.
  np.testing.assert_array_equal(got[0], [[True, True, False, False], [False] * 4])


SAMPLED_CASES = [case for case in CASES if case[1].get('ignore_index', IGNORE) == IGNORE]


@pytest.mark.parametrize('case', SAMPLED_CASES, ids=case_id)
def test_loss_on_sampled_pixels_matches_torch(case):
  """With sample_mask, each loss equals the toolbox loss on the sampler's (M, C) points."""
  name, kwargs = case
  logits, labels = make_inputs(6)
  mask = lf.ohem_pixel_mask(logits, labels, thresh=0.6, min_kept_per_image=5)
  assert 0 < int(mask.sum()) < int((labels != IGNORE).sum())
  got = JAX_LOSSES[name](logits, labels, sample_mask=mask, **kwargs)
  points, point_labels = torch_losses.ohem_sample(*torch_inputs(logits, labels), thresh=0.6,
                                                  min_kept_per_image=5)
  close(got, torch_losses.LOSSES[name](points, point_labels, **kwargs).item())


HEAD_CONFIGS = [
    ({'type': 'CrossEntropyLoss', 'scale_factor': 1.0, 'ignore_index': 255}, None),
    ([{'type': 'CrossEntropyLoss', 'class_weight': CLASS_WEIGHT, 'label_smoothing': 0.1},
      {'type': 'LovaszLoss', 'per_image': True, 'scale_factor': 0.5}], None),
    ([{'type': 'FocalLoss', 'scale_factor': 3.0},
      {'type': 'DiceLoss', 'reduction': 'none', 'lowest_loss_value': 0.8},
      {'type': 'LovaszLoss', 'per_image': True, 'reduction': 'none', 'lowest_loss_value': 0.3}],
     None),
    ({'type': 'CrossEntropyLoss'}, {'type': 'OHEMPixelSampler', 'thresh': 0.7,
                                    'min_kept_per_image': 8}),
    ([{'type': 'CrossEntropyLoss', 'class_weight': CLASS_WEIGHT},
      {'type': 'DiceLoss', 'reduction': 'none', 'lowest_loss_value': 0.5},
      {'type': 'LovaszLoss', 'per_image': True, 'reduction': 'none', 'lowest_loss_value': 0.3},
      {'type': 'FocalLoss', 'use_sigmoid': False}],
     {'type': 'OHEMPixelSampler', 'thresh': 0.5, 'min_kept_per_image': 4}),
]


@pytest.mark.parametrize('losses, sampler', HEAD_CONFIGS)
def test_head_loss_matches_torch(losses, sampler):
  logits, labels = make_inputs(7)
  got = jax.jit(lambda x, y: lf.head_loss(x, y, losses, sampler=sampler))(logits, labels)
  close(got, torch_losses.head_loss(*torch_inputs(logits, labels), losses, sampler).item())


def torch_gradient(function, logits, labels):
  x, y = torch_inputs(logits, labels, requires_grad=True)
  function(x, y).backward()
  return x.grad.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize('name, kwargs', [
    ('CrossEntropyLoss', {'class_weight': CLASS_WEIGHT, 'label_smoothing': 0.1}),
    ('CrossEntropyLoss', {'use_sigmoid': True}),
    ('FocalLoss', {'class_weight': CLASS_WEIGHT}),
    ('DiceLoss', {}),
    ('LovaszLoss', {}),
    ('LovaszLoss', {'use_sigmoid': True, 'per_image': True}),
])
def test_gradients_match_torch(name, kwargs):
  logits, labels = make_inputs(8)
  got = jax.grad(functools.partial(JAX_LOSSES[name], **kwargs))(logits, labels)
  want = torch_gradient(functools.partial(torch_losses.LOSSES[name], **kwargs), logits, labels)
  assert np.abs(want).max() > 1e-3
  close(got, want)
  assert np.all(np.asarray(got)[labels == IGNORE] == 0)


def test_head_loss_gradient_with_ohem_matches_torch():
  losses = [{'type': 'CrossEntropyLoss'}, {'type': 'LovaszLoss', 'per_image': True},
            {'type': 'DiceLoss'}]
  sampler = {'type': 'OHEMPixelSampler', 'thresh': 0.6, 'min_kept_per_image': 5}
  logits, labels = make_inputs(9)
  got = jax.grad(lambda x: lf.head_loss(x, labels, losses, sampler=sampler))(logits)
  want = torch_gradient(lambda x, y: torch_losses.head_loss(x, y, losses, sampler), logits,
                        labels)
  close(got, want)
  dropped = ~np.asarray(lf.ohem_pixel_mask(logits, labels, thresh=0.6, min_kept_per_image=5))
  assert dropped.any() and np.all(np.asarray(got)[dropped] == 0)


def test_float32_and_bfloat16_logits_compute_in_float32():
  with jax.enable_x64(False):
    logits, labels = make_inputs(10)
    for dtype in (jnp.float32, jnp.bfloat16):
      cast = jnp.asarray(logits, dtype)
      loss = lf.cross_entropy(cast, labels, class_weight=CLASS_WEIGHT)
      assert loss.dtype == jnp.float32
      want = torch_losses.cross_entropy(*torch_inputs(np.asarray(cast, np.float32), labels),
                                        class_weight=CLASS_WEIGHT)
      close(loss, want.item(), rtol=1e-6)


def test_no_valid_pixel_gives_what_the_toolbox_gives():
  logits, _ = make_inputs(11)
  ignored = np.full((N, H, W), IGNORE, np.int32)
  # Mean over no pixel: NaN, as torch.mean of an empty tensor.
  assert np.isnan(lf.cross_entropy(logits, ignored))
  assert np.isnan(torch_losses.cross_entropy(*torch_inputs(logits, ignored)).item())
  assert np.isnan(lf.focal_loss(logits, ignored))
  assert lf.cross_entropy(logits, ignored, reduction='sum') == 0
  # Dice of an empty image is 0: loss 1 per image.
  assert lf.dice_loss(logits, ignored) == 1
  # Sigmoid Lovasz over no entry is 0; softmax Lovasz over no present class raises in the toolbox.
  assert lf.lovasz_loss(logits, ignored, use_sigmoid=True) == 0
  assert lf.lovasz_loss(logits, ignored, classes='all') == 0
  assert np.isnan(lf.lovasz_loss(logits, ignored))
  with pytest.raises(RuntimeError):
    torch_losses.lovasz_loss(*torch_inputs(logits, ignored))


def test_one_empty_image_makes_per_image_lovasz_nan_without_poisoning_gradients():
  logits, labels = make_inputs(12)
  labels[0] = IGNORE
  assert np.isnan(lf.lovasz_loss(logits, labels, per_image=True))
  grad = jax.grad(lambda x: lf.lovasz_loss(x, labels, per_image=True, reduction='none')[1])(logits)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_labels_that_are_neither_classes_nor_ignored_give_nan():
  logits, labels = make_inputs(13)
  labels[0, 0, 0] = K
  for name, loss in JAX_LOSSES.items():
    assert np.isnan(loss(logits, labels)), name
  assert np.isnan(lf.head_loss(logits, labels, {'type': 'CrossEntropyLoss'},
                               sampler={'type': 'OHEMPixelSampler', 'thresh': 0.7}))


def test_good_configs_pass_the_check():
  for losses, sampler in HEAD_CONFIGS:
    lf.check_head_losses(losses, K, sampler=sampler)
  lf.check_head_losses({'type': 'LovaszLoss', 'use_sigmoid': True, 'classes': list(range(K)),
                        'class_weight': CLASS_WEIGHT}, K)


BAD_CONFIGS = [
    ({'type': 'CrossEntropy'}, None, "unknown type 'CrossEntropy'"),
    ({'type': 'CrossEntropyLoss', 'weight': [1] * K}, None, "unknown key 'weight'"),
    ({'type': 'CrossEntropyLoss', 'class_weight': [1.0] * (K - 1)}, None, 'has 4 values'),
    ({'type': 'FocalLoss', 'class_weight': 'balanced'}, None, 'list of 5 numbers'),
    ({'type': 'CrossEntropyLoss', 'reduction': 'none'}, None, "write 'mean' or 'sum'"),
    ({'type': 'DiceLoss', 'reduction': 'avg'}, None, "write one of 'mean', 'sum', 'none'"),
    ({'type': 'CrossEntropyLoss', 'label_smoothing': 1.5}, None, 'in [0, 1]'),
    ({'type': 'CrossEntropyLoss', 'ignore_index': -100}, None, 'write 255'),
    ({'type': 'DiceLoss', 'naive_dice': 'yes'}, None, 'True or False'),
    ({'type': 'LovaszLoss', 'classes': [0, K]}, None, 'class ids in [0, 5)'),
    ({'type': 'LovaszLoss', 'use_sigmoid': True, 'classes': 'all', 'class_weight': CLASS_WEIGHT},
     None, 'list(range(5))'),
    ([], None, 'non-empty list'),
    ([{'type': 'DiceLoss'}, 'LovaszLoss'], None, "losses[1]: expected a dict with a 'type'"),
    ({'type': 'DiceLoss'}, {'type': 'UGSampler'}, "unknown type 'UGSampler'"),
    ({'type': 'DiceLoss'}, {'type': 'OHEMPixelSampler', 'thresh': 1.0}, 'strictly between 0'),
    ({'type': 'DiceLoss'}, {'type': 'OHEMPixelSampler', 'thresh': 0.0}, 'strictly between 0'),
    ({'type': 'DiceLoss'}, {'type': 'OHEMPixelSampler', 'thresh': 0.7, 'min_kept_per_image': 1},
     'integer above 1'),
    ({'type': 'DiceLoss'}, {'type': 'OHEMPixelSampler', 'min_kept_per_image': 10}, "'thresh'"),
    ({'type': 'DiceLoss'}, {'type': 'OHEMPixelSampler', 'thresh': 0.7, 'loss_func': None},
     "unknown key 'loss_func'"),
]


@pytest.mark.parametrize('losses, sampler, fragment', BAD_CONFIGS)
def test_bad_configs_fail_with_one_line(losses, sampler, fragment):
  with pytest.raises(UserError) as error:
    lf.check_head_losses(losses, K, sampler=sampler)
  message = str(error.value)
  assert fragment in message and 'write' in message and '\n' not in message


def test_head_loss_checks_before_computing():
  logits, labels = make_inputs(14)
  with pytest.raises(UserError, match='has 4 values'):
    lf.head_loss(logits, labels, {'type': 'CrossEntropyLoss', 'class_weight': [1.0] * (K - 1)})
