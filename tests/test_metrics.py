"""Tests of bisenet_jax.eval.metrics against docs/reference.md §6 and the official Cityscapes
script."""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import labels as cs_labels
from cityscapesscripts.helpers.labels import trainId2label
from PIL import Image

from bisenet_jax.eval.metrics import confusion_matrix, format_table, segmentation_scores

K = 19
IGNORE = 255
REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = [trainId2label[t].name for t in range(K)]


def reference_scores(preds, labels):
  """docs/reference.md §6, written out per class without a confusion matrix."""
  keep = labels < K  # 255 (and anything else outside [0, K)) is dropped, as the reference's -1.
  pred, label = preds[keep], labels[keep]
  intersect = np.array([np.sum((pred == c) & (label == c)) for c in range(K)], np.float64)
  pred_area = np.array([np.sum(pred == c) for c in range(K)], np.float64)
  label_area = np.array([np.sum(label == c) for c in range(K)], np.float64)
  union = pred_area + label_area - intersect
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = intersect / union
    acc = intersect / label_area
  return {'iou': iou, 'miou': np.nanmean(iou), 'aacc': intersect.sum() / label_area.sum(),
          'acc': acc}


def random_batch(rng, n=4, shape=(12, 17), absent=(3, 11)):
  """Predictions and labels that never use the `absent` classes, with ignored pixels."""
  present = np.setdiff1d(np.arange(K), absent)
  preds = rng.choice(present, size=(n, *shape)).astype(np.int32)
  labels = rng.choice(present, size=(n, *shape)).astype(np.uint8)
  labels[rng.random(labels.shape) < 0.2] = IGNORE
  labels[0] = IGNORE  # An image with nothing to evaluate.
  preds[1] = np.where(labels[1] == IGNORE, preds[1], labels[1])  # One predicted perfectly.
  return preds, labels


def assert_scores_equal(got, want):
  np.testing.assert_array_equal(np.isnan(got['iou']), np.isnan(want['iou']))
  for key in ('iou', 'acc'):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)
  for key in ('miou', 'aacc'):
    assert got[key] == pytest.approx(want[key], rel=1e-12), key


def test_scores_match_reference_formula():
  preds, labels = random_batch(np.random.default_rng(0))
  confusion = np.asarray(jax.jit(confusion_matrix)(preds, labels))
  assert confusion.sum() == np.sum(labels != IGNORE)
  got = segmentation_scores(confusion)
  want = reference_scores(preds, labels)
  assert_scores_equal(got, want)
  assert np.isnan(got['iou'][[3, 11]]).all() and not np.isnan(got['miou'])


def test_confusion_rows_are_ground_truth():
  preds = np.array([[[2, 2, 5]]], np.int32)
  labels = np.array([[[2, 1, IGNORE]]], np.uint8)
  confusion = np.asarray(confusion_matrix(preds, labels))
  assert confusion[2, 2] == 1 and confusion[1, 2] == 1 and confusion.sum() == 2


def test_invalid_rows_and_out_of_range_labels_are_dropped():
  rng = np.random.default_rng(1)
  preds, labels = random_batch(rng, n=6)
  valid = np.array([True, True, False, True, False, True])
  labels_with_junk = labels.copy()
  labels_with_junk[3, 0, :5] = 19  # Outside [0, K) but not 255: ignored as in the reference.
  got = confusion_matrix(preds, labels_with_junk, valid=valid)
  labels[3, 0, :5] = IGNORE
  want = confusion_matrix(preds[valid], labels[valid])
  np.testing.assert_array_equal(got, want)


def test_batches_accumulate_to_the_whole_split():
  preds, labels = random_batch(np.random.default_rng(2), n=6)
  total = np.zeros((K, K), np.int64)
  for start in range(0, 6, 2):
    total += np.asarray(confusion_matrix(preds[start:start + 2], labels[start:start + 2]), np.int64)
  np.testing.assert_array_equal(total, confusion_matrix(preds, labels))
  assert_scores_equal(segmentation_scores(total), reference_scores(preds, labels))


def test_no_evaluated_pixel_gives_nan_without_warnings():
  with np.errstate(all='raise'):
    scores = segmentation_scores(np.zeros((K, K), np.int64))
  assert np.isnan(scores['iou']).all() and np.isnan(scores['miou']) and np.isnan(scores['aacc'])


def test_format_table_lists_every_class():
  preds, labels = random_batch(np.random.default_rng(3))
  scores = segmentation_scores(np.asarray(confusion_matrix(preds, labels)))
  table = format_table(scores, CLASS_NAMES)
  lines = table.splitlines()
  assert len(lines) == 1 + K + 2
  assert lines[1 + 3].split() == ['wall', 'n/a', 'n/a']  # Class 3 is absent.
  assert lines[-2].split() == ['mIoU', f'{100 * scores["miou"]:.2f}']
  assert lines[-1].split() == ['aAcc', f'{100 * scores["aacc"]:.2f}']


def test_matches_official_cityscapes_evaluation(tmp_path):
  """Per-class IoU and their mean equal cityscapesscripts' on a tiny fake val set of labelIds."""
  rng = np.random.default_rng(4)
  preds, labels = random_batch(rng, n=4, shape=(16, 24))
  train_to_label_id = np.array([trainId2label[t].id for t in range(K)], np.uint8)
  ignored_label_ids = [l.id for l in cs_labels if l.ignoreInEval and l.id >= 0]

  gt_files, pred_files = [], []
  for i, (pred, label) in enumerate(zip(preds, labels)):
    gt_ids = train_to_label_id[np.minimum(label, K - 1)]
    ignored = label == IGNORE  # Every kind of ignored labelId, as the real ground truth has.
    gt_ids[ignored] = rng.choice(ignored_label_ids, size=int(ignored.sum()))
    gt_files.append(tmp_path / f'city_{i:06d}_000019_gtFine_labelIds.png')
    pred_files.append(tmp_path / f'city_{i:06d}_000019_pred.png')
    Image.fromarray(gt_ids).save(gt_files[-1])
    Image.fromarray(train_to_label_id[pred]).save(pred_files[-1])

  args = copy.copy(cs_eval.args)  # The module keeps its options in a global; leave it alone.
  args.evalInstLevelScore = False  # Needs instanceIds files; instance-weighted IoU is not ours.
  args.JSONOutput = False
  args.quiet = True
  official = cs_eval.evaluateImgLists([str(p) for p in pred_files], [str(p) for p in gt_files],
                                      args)

  scores = segmentation_scores(np.asarray(confusion_matrix(preds, labels)))
  want_iou = np.array([official['classScores'][name] for name in CLASS_NAMES])
  np.testing.assert_array_equal(np.isnan(scores['iou']), np.isnan(want_iou))
  np.testing.assert_allclose(scores['iou'], want_iou, rtol=1e-12)
  assert scores['miou'] == pytest.approx(official['averageScoreClasses'], rel=1e-12)


SHARDED_SCRIPT = textwrap.dedent('''
    import os
    os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
    from bisenet_jax import parallel
    parallel.setup()
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from bisenet_jax.eval.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    preds = rng.integers(0, 19, (16, 8, 12)).astype(np.int32)
    labels = rng.integers(0, 20, (16, 8, 12)).astype(np.uint8)
    labels[labels == 19] = 255
    valid = rng.random(16) < 0.7
    want = np.asarray(confusion_matrix(preds, labels, valid=valid))
    for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
      mesh = jax.make_mesh((8,), ('data',), axis_types=(axis_type,))
      batch = jax.device_put((preds, labels, valid), NamedSharding(mesh, P('data')))
      got = jax.jit(confusion_matrix)(*batch[:2], valid=batch[2])
      assert np.array_equal(np.asarray(got), want), axis_type
    print('ok')
''')


def test_confusion_matrix_on_a_batch_sharded_over_eight_devices():
  # A subprocess: XLA_FLAGS only takes effect before jax initialises, which it already has here.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run([sys.executable, '-c', SHARDED_SCRIPT], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == 'ok'
