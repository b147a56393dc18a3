"""Records what sssegmentation 1.7.0 itself computes for the training recipe: the optimizer and
lr schedule (optimizer.npz), the train transforms (augmentation.npz) and the iterations per
epoch of its training loader (epochs.npz) and its evaluation scores (evaluation.npz), for
tests/test_goldens_recipe.py to compare the project against (docs/reference.md §16).

It runs the reference's own code, in the reference's environment (PyTorch, sssegmentation,
OpenCV 4; no JAX). It refuses OpenCV 5, whose `cv2.subtract` and `cv2.multiply` no longer read
Normalize's [1, 3] mean and 1 / std as per-channel scalars for every image shape (§5.3):

  python -m venv /tmp/ssseg-venv
  /tmp/ssseg-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
  /tmp/ssseg-venv/bin/pip install --no-build-isolation --no-deps sssegmentation==1.7.0
  /tmp/ssseg-venv/bin/pip install pandas 'opencv-python-headless<5' dill tqdm scipy numpy
  /tmp/ssseg-venv/bin/python tests/goldens/record_recipe.py

The files hold only inputs (drawn from fixed seeds) and the reference's outputs; the settings of
each run are stored with it, in the reference's own configuration format.
"""

import importlib.metadata
import json
from pathlib import Path

import cv2
import numpy as np
import torch
from ssseg.modules.datasets.pipelines import Evaluation
from ssseg.modules.datasets.pipelines.transforms import BuildDataTransform
from ssseg.modules.models.optimizers import BuildOptimizer
from ssseg.modules.models.schedulers import BuildScheduler
from ssseg.modules.parallel.dataloader import BuildDistributedDataloader

GOLDENS = Path(__file__).resolve().parent

# The two optimizer recipes of configs/, as sssegmentation's configs give them: BiSeNetV1 (R18,
# R50) and BiSeNetV2 share one (docs/reference.md §4.2-4.3, §10.3), Fast-SCNN has its own (§11.3).
RECIPES = {
    'bisenet': dict(max_epochs=860, iters_per_epoch=186, lr=0.05, weight_decay=5e-4,
                    warmup_cfg={'type': 'linear', 'ratio': 0.1, 'iters': 1000}),
    'fastscnn': dict(max_epochs=1750, iters_per_epoch=93, lr=0.12, weight_decay=4e-5,
                     warmup_cfg=None),
}
HEAD_STEPS = 1010  # Steps 0..1009: across the end of the 1000-step warm-up.
TAIL_STEPS = 10  # The last steps of the schedule, reached as a resumed run reaches them.
PARAMETER_SHAPES = {'kernel': (2, 3), 'scale': (3,)}  # A weight and a 1-D BN-like parameter.

# The train pipeline of docs/reference.md §5.3 at 1/16 of the size (Resize to 128x64 instead of
# 2048x1024, crops of 64x64 as BiSeNet's 1024x1024 and of 32x64 as Fast-SCNN's 512x1024), so
# that crops of small frames keep the reference's proportions: padding and retries happen.
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def data_pipelines(crop_size):
  return [
      ('Resize', {'output_size': (128, 64), 'keep_ratio': True, 'scale_range': (0.5, 2.0)}),
      ('RandomCrop', {'crop_size': crop_size, 'one_category_max_ratio': 0.75}),
      ('RandomFlip', {'prob': 0.5}),
      ('PhotoMetricDistortion', {}),
      ('Normalize', {'mean': MEAN, 'std': STD}),
      ('ToTensor', {}),
      ('Padding', {'output_size': crop_size, 'data_type': 'tensor'}),
  ]


PIPELINES = {'crop64x64': (data_pipelines((64, 64)), 30),
             'crop32x64': (data_pipelines((32, 64)), 12)}  # (pipeline, records).
IGNORE_INDEX = -100
NUM_CLASSES = 19


# Cityscapes train: the images an epoch's sampler draws from, and the global batches of the
# recipes (16 = BiSeNetV1 and V2, 32 = Fast-SCNN) on the GPU counts they may run on.
CITYSCAPES_TRAIN = 2975
GLOBAL_BATCHES = (16, 32)
WORLD_SIZES = (1, 2, 4, 8, 16)


def record_epochs():
  """``len(dataloader)`` of the reference's training loader (train.py's ``iters_per_epoch``)
  for each global batch and GPU count: its own ``BuildDistributedDataloader`` (a
  DistributedSampler, ``batch_size = total // world_size`` per GPU, ``drop_last``), seen from
  rank 0 of ``world_size`` processes (torch.distributed's size and rank stand in for a process
  group, which one process cannot form with itself 16 times)."""
  dataset = list(range(CITYSCAPES_TRAIN))
  lengths = np.zeros((len(GLOBAL_BATCHES), len(WORLD_SIZES)), np.int64)
  real = torch.distributed.get_world_size, torch.distributed.get_rank
  try:
    for j, world_size in enumerate(WORLD_SIZES):
      torch.distributed.get_world_size = lambda group=None, size=world_size: size
      torch.distributed.get_rank = lambda group=None: 0
      for i, batch in enumerate(GLOBAL_BATCHES):
        loader = BuildDistributedDataloader(dataset, {
            'batch_size': batch // world_size, 'num_workers': 0, 'shuffle': True,
            'pin_memory': False, 'drop_last': True})
        lengths[i, j] = len(loader)
  finally:
    torch.distributed.get_world_size, torch.distributed.get_rank = real
  return {'global_batches': np.array(GLOBAL_BATCHES), 'world_sizes': np.array(WORLD_SIZES),
          'iters_per_epoch': lengths}


def record_evaluation():
  """The reference's scores (the metrics of its ``dataset.evaluate`` when chainercv is absent,
  its ``Evaluation``) of predictions against labels, after train.py's evaluation maps every
  label outside [0, 19) to -1: 6 pairs of 37x53 maps, mostly right, with ignored pixels and a
  class that neither side has (a NaN IoU)."""
  rng = np.random.default_rng(3)
  labels = rng.integers(0, NUM_CLASSES, (6, 37, 53))
  labels[labels == 7] = 8  # Class 7 absent from the labels...
  labels[rng.random(labels.shape) < 0.1] = 255
  predictions = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, NUM_CLASSES,
                                                                              labels.shape))
  predictions[(predictions == 7) | (predictions == 255)] = 9  # ... and from the predictions.
  targets = labels.astype(np.int32)
  targets[(targets >= NUM_CLASSES) | (targets < 0)] = -1
  scores = Evaluation(list(predictions.astype(np.int32)), list(targets), NUM_CLASSES,
                      ignore_index=-1).all_metric_results
  return {'predictions': predictions.astype(np.uint8), 'labels': labels.astype(np.uint8),
          'iou': scores['iou'], 'miou': np.float64(scores['miou']),
          'all_accuracy': np.float64(scores['all_accuracy']), 'accuracy': scores['accuracy']}


def record_optimizer():
  rng = np.random.default_rng(0)
  initial = {name: rng.normal(size=shape) for name, shape in PARAMETER_SHAPES.items()}
  total_steps = HEAD_STEPS + TAIL_STEPS
  grads = {name: rng.normal(size=(total_steps, *shape)) for name, shape in PARAMETER_SHAPES.items()}
  out = {f'initial/{name}': value for name, value in initial.items()}
  out.update({f'grads/{name}': value for name, value in grads.items()})
  for recipe, settings in RECIPES.items():
    for key, value in run_recipe(settings, initial, grads).items():
      out[f'{recipe}/{key}'] = value
  return out


def run_recipe(settings, initial, grads):
  """Drives the reference's optimizer and scheduler as its train.py does, in float64."""
  model = torch.nn.Module()
  for name, value in initial.items():
    model.register_parameter(name, torch.nn.Parameter(torch.tensor(value, dtype=torch.float64)))
  optimizer_cfg = {'type': 'SGD', 'lr': settings['lr'], 'momentum': 0.9,
                   'weight_decay': settings['weight_decay'], 'params_rules': {}}
  scheduler_cfg = {'type': 'PolyScheduler', 'max_epochs': settings['max_epochs'], 'power': 0.9,
                   'min_lr': 1e-4, 'warmup_cfg': settings['warmup_cfg'],
                   'optimizer': optimizer_cfg}
  optimizer = BuildOptimizer(model, optimizer_cfg)
  scheduler_cfg.update({'lr': optimizer_cfg['lr'], 'iters_per_epoch': settings['iters_per_epoch'],
                        'params_rules': optimizer_cfg['params_rules']})
  scheduler = BuildScheduler(optimizer=optimizer, scheduler_cfg=scheduler_cfg)
  max_iters = scheduler.max_iters
  steps = [*range(HEAD_STEPS), *range(max_iters - TAIL_STEPS, max_iters)]
  lrs, values = [], {name: [] for name in initial}
  for index, step in enumerate(steps):
    if step != scheduler.cur_iter:  # A resume: the counter jumps, parameters and momentum stay.
      scheduler.setstate({'cur_epoch': step // settings['iters_per_epoch'], 'cur_iter': step})
    lrs.append(scheduler.updatelr())
    assert all(group['lr'] == lrs[-1] for group in optimizer.param_groups)
    optimizer.zero_grad()
    for name, parameter in model.named_parameters():
      parameter.grad = torch.tensor(grads[name][index], dtype=torch.float64)
    scheduler.step()
    for name, parameter in model.named_parameters():
      values[name].append(parameter.detach().numpy().copy())
  return {'steps': np.array(steps), 'lr': np.array(lrs, np.float64),
          **{name: np.stack(history) for name, history in values.items()}}


def synthetic_frames():
  """Frames that make every branch of the crop happen: several classes in blocks (accepted and
  retried crops), one class only (every try fails, the last crop is kept), nothing but ignore
  (the sample stays uncropped and the padding centre-crops it). BGR uint8 images and float32
  labels with -100, as the reference's dataset hands them to the transforms."""
  rng = np.random.default_rng(1)
  frames = []
  for kind, (height, width) in [('blocks', (64, 128)), ('blocks', (97, 203)),
                                ('blocks', (97, 203)), ('one_class', (64, 128)),
                                ('ignore', (97, 203))]:
    cells = rng.integers(0, NUM_CLASSES, (4, 8))
    cells[rng.random((4, 8)) < 0.4] = cells[0, 0]  # One class dominates, so crops get retried.
    cells[rng.random((4, 8)) < 0.15] = IGNORE_INDEX
    label = np.kron(cells, np.ones((height // 4 + 1, width // 8 + 1), int))[:height, :width]
    if kind == 'one_class':
      label = np.where(label == IGNORE_INDEX, IGNORE_INDEX, cells[0, 0])
    if kind == 'ignore':
      label = np.full_like(label, IGNORE_INDEX)
    colours = rng.integers(0, 256, (NUM_CLASSES + 1, 3))
    noise = rng.integers(-12, 13, (height, width, 3))
    colour_index = np.where(label == IGNORE_INDEX, NUM_CLASSES, label)
    image = np.clip(colours[colour_index] + noise, 0, 255).astype(np.uint8)
    frames.append({'image': image, 'seg_target': label.astype(np.float32)})
  return frames


class DrawRecorder:
  """Replaces the NumPy global-RNG functions the transforms call with ones that record every
  draw: the function, its bounds (low, high; NaN for [0, 1) draws) and the value drawn."""

  FUNCTIONS = ('random_sample', 'rand', 'randint', 'uniform')

  def __init__(self):
    self.draws = []
    self.originals = {name: getattr(np.random, name) for name in self.FUNCTIONS}

  def __enter__(self):
    np.random.random_sample = lambda: self._record('random_sample', np.nan, np.nan)
    np.random.rand = lambda: self._record('rand', np.nan, np.nan)
    np.random.randint = lambda low, high=None: self._record(
        'randint', *((0, low) if high is None else (low, high)))
    np.random.uniform = lambda low, high: self._record('uniform', low, high)
    return self

  def __exit__(self, *exc_info):
    for name, function in self.originals.items():
      setattr(np.random, name, function)

  def _record(self, name, low, high):
    bounds = () if name in ('random_sample', 'rand') else (low, high)
    value = self.originals[name](*bounds)
    self.draws.append((name, low, high, value))
    return value

  def replay(self, draws):
    """Calls the original functions again: the global state must end where the run left it."""
    for name, low, high, _ in draws:
      self.originals[name](*(() if name in ('random_sample', 'rand') else (low, high)))


def record_augmentation():
  frames = synthetic_frames()
  out = {}
  for index, frame in enumerate(frames):
    out[f'frames/{index}/image_bgr'] = frame['image']
    out[f'frames/{index}/seg_target'] = frame['seg_target']
  branches = set()
  for seed, (name, (pipeline, records)) in enumerate(PIPELINES.items()):
    transforms = [BuildDataTransform({**cfg, 'type': kind}) for kind, cfg in pipeline]
    np.random.seed(seed)
    results = [augment(transforms, frames[record % len(frames)], branches)
               for record in range(records)]
    out[f'{name}/data_pipelines'] = np.array(json.dumps(pipeline))
    out[f'{name}/frame'] = np.arange(records) % len(frames)
    out[f'{name}/image'] = np.stack([image for image, _, _ in results])
    out[f'{name}/seg_target'] = np.stack([label for _, label, _ in results])
    draws = [(record, *draw) for record, (_, _, record_draws) in enumerate(results)
             for draw in record_draws]
    out[f'{name}/draw_record'] = np.array([draw[0] for draw in draws])
    out[f'{name}/draw_function'] = np.array([draw[1] for draw in draws])
    for column, key in enumerate(('low', 'high', 'value'), start=2):
      out[f'{name}/draw_{key}'] = np.array([draw[column] for draw in draws], np.float64)
  expected = {'flip', 'no_flip', 'contrast_first', 'contrast_last', 'crop_accepted_first',
              'crop_retried', 'last_crop_kept', 'uncropped', 'padded', 'centre_cropped'}
  assert expected <= branches, f'branches never taken: {sorted(expected - branches)}'
  return out


def augment(transforms, frame, branches):
  """One record through the reference's transforms, applied in turn as its Compose does: the
  outputs (CHW float32 image, int64 label as train.py casts it) and the draws. Notes in
  `branches` which branches the record took."""
  sample = {'image': frame['image'].copy(), 'seg_target': frame['seg_target'].copy(),
            'height': frame['image'].shape[0], 'width': frame['image'].shape[1]}
  state = np.random.get_state()
  shapes = []
  with DrawRecorder() as recorder:
    for transform in transforms:
      sample = transform(sample)
      shapes.append(tuple(sample['seg_target'].shape))
  end_state = np.random.get_state()
  np.random.set_state(state)
  recorder.replay(recorder.draws)
  assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), end_state)), (
      'the transforms drew from a NumPy function that is not recorded')
  crop_size = transforms[1].crop_size
  note_branches(recorder.draws, shapes[0], shapes[1], crop_size, branches)
  return sample['image'].numpy(), sample['seg_target'].long().numpy(), recorder.draws


def note_branches(draws, resized, cropped, crop_size, branches):
  """The branches of RandomCrop, RandomFlip, PhotoMetricDistortion and Padding one record took,
  read from its draws and from its label's shape after Resize and after RandomCrop."""
  names = [name for name, *_ in draws]
  flip = names.index('rand')
  crop_tries = (flip - 1) // 2  # One draw for Resize, then two per crop try.
  uncropped = resized == cropped and any(r > c for r, c in zip(resized, crop_size))
  branches.add('crop_accepted_first' if crop_tries == 1 else 'crop_retried')
  branches.add('uncropped' if uncropped else 'last_crop_kept' if crop_tries == 10 else 'cropped')
  branches.add('no_flip' if draws[flip][3] > 0.5 else 'flip')
  brightness = flip + 1
  mode = brightness + (2 if draws[brightness][3] else 1)
  branches.add('contrast_first' if draws[mode][3] == 1 else 'contrast_last')
  if any(c < s for c, s in zip(cropped, crop_size)):
    branches.add('padded')
  if any(c > s for c, s in zip(cropped, crop_size)):
    branches.add('centre_cropped')


def main():
  if not cv2.__version__.startswith('4.'):
    raise SystemExit(f'OpenCV {cv2.__version__}: the reference ran on OpenCV 4.')
  ssseg_version = importlib.metadata.version('sssegmentation')
  if ssseg_version != '1.7.0':
    raise SystemExit(f'sssegmentation {ssseg_version}: the reference is 1.7.0.')
  versions = {'versions': np.array(json.dumps({
      'sssegmentation': ssseg_version, 'torch': torch.__version__, 'numpy': np.__version__,
      'opencv': cv2.__version__}))}
  for name, values in (('optimizer', record_optimizer()), ('augmentation', record_augmentation()),
                       ('epochs', record_epochs()), ('evaluation', record_evaluation())):
    path = GOLDENS / f'{name}.npz'
    np.savez_compressed(path, **versions, **values)
    print(f'{path.name}: {len(values)} arrays, {path.stat().st_size} bytes')


if __name__ == '__main__':
  main()
