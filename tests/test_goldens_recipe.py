"""The training recipe against what sssegmentation 1.7.0 itself computes (tests/goldens/, recorded
by tests/goldens/record_recipe.py; docs/reference.md §16): the lr schedule and optimizer of every
config, the train transforms replayed on the reference's own random draws, the iterations of an
epoch and the evaluation's scores."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bisenet_jax.data import normalization, transforms
from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.eval import metrics
from bisenet_jax.train import config as config_lib
from bisenet_jax.train import optim
from conftest import ROOT
from test_train import load_config_file

GOLDENS = ROOT / 'tests' / 'goldens'
OPTIMIZER = np.load(GOLDENS / 'optimizer.npz')
AUGMENTATION = np.load(GOLDENS / 'augmentation.npz')

# Each config's optimizer recipe in the golden file: BiSeNetV1 and BiSeNetV2 share one.
GOLDEN_RECIPE = {'r18.py': 'bisenet', 'r50.py': 'bisenet', 'bisenetv2.py': 'bisenet',
                 'fastscnn.py': 'fastscnn'}
PARAMETERS = ('kernel', 'scale')
EPS64 = np.finfo(np.float64).eps
MIN_LR = 1e-4  # Every recipe's.


def project_training(config_name, dtype):
  """The config's schedule and optimizer, built as training builds them, driven over the golden's
  steps and gradients in `dtype`: the lr of every step and the parameters after it.

  The optimizer's step count is set to each golden step, which changes it only where the golden
  jumps to the last steps of the schedule, as a resumed run does.
  """
  spec = load_config_file(ROOT / 'configs' / config_name, None)
  settings = spec.optimizer
  schedule = optim.poly_warmup_schedule(settings.base_lr, spec.total_steps, settings.min_lr,
                                        settings.power, settings.warmup_steps,
                                        settings.warmup_ratio, dtype=dtype)
  optimizer = optim.make_optimizer(schedule, settings.momentum, settings.weight_decay)
  recipe = GOLDEN_RECIPE[config_name]
  counts = jnp.asarray(OPTIMIZER[f'{recipe}/steps'], jnp.int32)  # optax counts in int32.
  params = {name: jnp.asarray(OPTIMIZER[f'initial/{name}'], dtype) for name in PARAMETERS}
  grads = {name: jnp.asarray(OPTIMIZER[f'grads/{name}'], dtype) for name in PARAMETERS}

  def step(carry, inputs):
    params, state = carry
    step_grads, count = inputs
    state = optax.tree_utils.tree_set(state, count=count)
    updates, state = optimizer.update(step_grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), (params, schedule(count))

  _, (history, lrs) = jax.jit(lambda: jax.lax.scan(step, (params, optimizer.init(params)),
                                                   (grads, counts)))()
  return np.asarray(lrs, np.float64), {name: np.asarray(history[name]) for name in PARAMETERS}


# A float64 lr is the reference's arithmetic (optim.poly_warmup_schedule): it differs from the
# reference's Python float only where XLA's pow and C's round differently (measured: at most 2.8
# ulps, half the steps bit-identical).
LR_TOLERANCE = 4 * EPS64


def assert_parameters_match(params, recipe, dtype):
  """Within 16 ulps of `dtype` of each parameter's largest value: an update's rounding is relative
  to the parameters' size, so one that passes near zero keeps the absolute error of the others."""
  for name in PARAMETERS:
    want = OPTIMIZER[f'{recipe}/{name}']
    np.testing.assert_allclose(params[name], want, rtol=0,
                               atol=16 * np.finfo(dtype).eps * np.abs(want).max(), err_msg=name)


@pytest.mark.parametrize('config_name', sorted(GOLDEN_RECIPE))
def test_float64_schedule_and_optimizer_match_the_reference(config_name):
  recipe = GOLDEN_RECIPE[config_name]
  with jax.enable_x64(True):
    lrs, params = project_training(config_name, jnp.float64)
  want_lrs = OPTIMIZER[f'{recipe}/lr']
  error = np.abs(lrs - want_lrs) / want_lrs
  worst = int(np.argmax(error))
  assert error[worst] <= LR_TOLERANCE, (
      f'step {OPTIMIZER[f"{recipe}/steps"][worst]}: lr {lrs[worst]!r}, reference '
      f'{want_lrs[worst]!r}, relative error {error[worst]:.2g}')
  assert_parameters_match(params, recipe, np.float64)


@pytest.mark.parametrize('config_name', sorted(GOLDEN_RECIPE))
def test_float32_schedule_and_optimizer_match_the_reference(config_name):
  """In float32, as training runs: the lr to tests/test_optim.py's relative 1e-6."""
  recipe = GOLDEN_RECIPE[config_name]
  lrs, params = project_training(config_name, jnp.float32)
  np.testing.assert_allclose(lrs, OPTIMIZER[f'{recipe}/lr'], rtol=1e-6)
  assert_parameters_match(params, recipe, np.float32)


class ReplayGenerator:
  """Stands in for a record's `np.random.Generator`: returns the reference's recorded draws in
  order, and checks that each call is the one the reference made at that point (its NumPy
  global-RNG function mapped to the Generator method, and the same bounds)."""

  METHODS = {'random_sample': 'random', 'rand': 'random', 'randint': 'integers',
             'uniform': 'uniform'}

  def __init__(self, functions, lows, highs, values):
    self.draws = list(zip(functions, lows, highs, values))
    self.used = 0

  def random(self):
    return self._next('random', None)

  def integers(self, low, high=None):
    return int(self._next('integers', (0, low) if high is None else (low, high)))

  def uniform(self, low, high):
    return self._next('uniform', (low, high))

  def _next(self, method, bounds):
    assert self.used < len(self.draws), f'draw {self.used} ({method}) was not made by the reference'
    function, low, high, value = self.draws[self.used]
    bounds_drawn = None if function in ('random_sample', 'rand') else (float(low), float(high))
    want = (self.METHODS[function], bounds_drawn)
    assert (method, bounds) == want, f'draw {self.used}: {method}{bounds}, reference {want}'
    self.used += 1
    return float(value)


def pipeline_settings(name):
  """train_transform's arguments from the reference's recorded pipeline."""
  pipeline = dict(json.loads(str(AUGMENTATION[f'{name}/data_pipelines'])))
  assert pipeline['Normalize'] == {'mean': list(normalization.MEAN_RGB),
                                   'std': list(normalization.STD_RGB)}
  width, height = pipeline['Resize']['output_size']
  crop_size = tuple(pipeline['RandomCrop']['crop_size'])
  assert tuple(pipeline['Padding']['output_size']) == crop_size
  return dict(crop_size=crop_size, resize_to=(height, width),
              scale_range=tuple(pipeline['Resize']['scale_range']))


def project_sample(frame):
  """A reference input (BGR image, float32 label with -100) in the project's form (RGB, uint8
  label with 255)."""
  label = AUGMENTATION[f'frames/{frame}/seg_target']
  return {'image': AUGMENTATION[f'frames/{frame}/image_bgr'][..., ::-1],
          'label': np.where(label == -100, IGNORE_LABEL, label).astype(np.uint8)}


@pytest.mark.parametrize('name', ['crop64x64', 'crop32x64'])
def test_train_transform_matches_the_reference_draw_for_draw(name):
  settings = pipeline_settings(name)
  draw_record = AUGMENTATION[f'{name}/draw_record']
  columns = [AUGMENTATION[f'{name}/draw_{key}'] for key in ('function', 'low', 'high', 'value')]
  outputs = []
  for record, frame in enumerate(AUGMENTATION[f'{name}/frame']):
    rng = ReplayGenerator(*(column[draw_record == record] for column in columns))
    outputs.append(transforms.train_transform(project_sample(frame), rng, **settings))
    assert rng.used == len(rng.draws), f'record {record}: draws left over'
  images = normalization.normalize_on_device(jnp.asarray(np.stack([o['image'] for o in outputs])),
                                             jnp.asarray(np.stack([o['content'] for o in outputs])))
  want_images = AUGMENTATION[f'{name}/image'].transpose(0, 2, 3, 1)
  want_labels = AUGMENTATION[f'{name}/seg_target']
  for record, (output, image) in enumerate(zip(outputs, np.asarray(images))):
    top, left, height, width = output['content']
    content = (slice(top, top + height), slice(left, left + width))
    np.testing.assert_array_equal(image, want_images[record], err_msg=f'record {record}')
    np.testing.assert_array_equal(normalization.normalize(output['image'])[content],
                                  want_images[record][content], err_msg=f'record {record}')
    label = output['label'].astype(np.int64)
    label[label == IGNORE_LABEL] = -100
    np.testing.assert_array_equal(label, want_labels[record], err_msg=f'record {record}')


def test_an_epoch_has_the_reference_loaders_iterations():
  """186 steps of 16 (93 of 32) per epoch, as the reference's DistributedSampler loader gives on
  2 to 16 GPUs (185 and 92 on one), and each recipe's total steps are its epochs of those."""
  epochs = np.load(GOLDENS / 'epochs.npz')
  for batch, lengths in zip(epochs['global_batches'], epochs['iters_per_epoch']):
    for world_size, length in zip(epochs['world_sizes'], lengths):
      if world_size > 1:
        assert config_lib.iterations_per_epoch(int(batch)) == length, (batch, world_size)
  on_8 = dict(zip(epochs['global_batches'], epochs['iters_per_epoch'][:, 3]))
  assert list(epochs['world_sizes']).index(8) == 3
  for config_name, epoch_count in (('r18.py', 860), ('bisenetv2.py', 860), ('fastscnn.py', 1750)):
    config = load_config_file(ROOT / 'configs' / config_name, None)
    assert config.total_steps == epoch_count * on_8[config.batch_size], config_name
    assert config.checkpoint_every_steps == on_8[config.batch_size], config_name


def test_scores_are_the_reference_evaluations():
  """IoU per class (NaN for a class neither side has), mIoU over the others and the pixel
  accuracy, from the device-side confusion matrix and from the host's, as the reference's
  evaluation scores the same predictions (labels outside the classes ignored)."""
  golden = np.load(GOLDENS / 'evaluation.npz')
  predictions, labels = golden['predictions'], golden['labels']
  for confusion in (np.asarray(metrics.confusion_matrix(predictions, labels), np.int64),
                    metrics.host_confusion_matrix(predictions, labels)):
    scores = metrics.segmentation_scores(confusion)
    np.testing.assert_array_equal(np.isnan(scores['iou']), np.isnan(golden['iou']))
    np.testing.assert_allclose(scores['iou'], golden['iou'], rtol=1e-15)
    np.testing.assert_allclose(scores['acc'], golden['accuracy'], rtol=1e-15)
    assert scores['miou'] == pytest.approx(float(golden['miou']), rel=1e-15)
    assert scores['aacc'] == pytest.approx(float(golden['all_accuracy']), rel=1e-15)
  assert np.isnan(golden['iou']).sum() == 1 and (labels == 255).any()
