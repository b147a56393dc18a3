"""Runs that cannot train are refused before anything runs, or stopped once they stall: loss
scale settings, micro-batches of one image for networks with a BatchNorm after a global pooling,
and float16 runs whose every step is skipped."""

import json

import pytest

from bisenet_jax import models
from bisenet_jax.errors import UserError
from bisenet_jax.specs import NETWORKS, ModelSpec
from bisenet_jax.train import config as config_lib
from bisenet_jax.train import loop
from bisenet_jax.train import step as step_lib


def tiny_config(root, **overrides):
  """The demo config on a few 32x64 synthetic frames, one compile's worth of steps."""
  config = config_lib.get_config('bisenetv1_r18', 'demo')
  settings = {'data.root': str(root), 'data.synthetic.num_train': 4,
              'data.synthetic.num_val': 2, 'data.synthetic.height': 64,
              'data.synthetic.width': 128, 'data.resize_to': (64, 128),
              'data.crop_size': (64, 64), 'batch_size': 2, 'total_steps': 8,
              'log_every_steps': 2, 'checkpoint_every_steps': 100, 'eval_every_steps': 100,
              'eval_batch_per_device': 2, **overrides}
  for key, value in settings.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture
def no_training(monkeypatch):
  """Fails the test if a training step is ever built (so nothing was compiled)."""
  def refuse(*args, **kwargs):
    raise AssertionError('the training step was built')
  monkeypatch.setattr(step_lib, 'jit_train_step', refuse)


def refused(config, tmp_path) -> str:
  """The one-line message with which ``config`` is refused; nothing may have been written."""
  with pytest.raises(UserError) as error:
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'data').exists()
  message = str(error.value)
  assert '\n' not in message
  return message


@pytest.mark.parametrize('key, value', [
    ('init_scale', 0.0), ('init_scale', -1.0), ('init_scale', float('nan')),
    ('growth_factor', 1.0), ('growth_factor', 0.5),
    ('backoff_factor', 0.0), ('backoff_factor', 1.0), ('backoff_factor', 2.0),
    ('growth_interval', 0), ('max_consecutive_skips', 0),
])
def test_loss_scale_that_cannot_train_is_refused(tmp_path, no_training, key, value):
  message = refused(tiny_config(tmp_path / 'data', **{'model.dtype': 'float16',
                                                      f'loss_scale.{key}': value}), tmp_path)
  assert message.startswith(f'config.loss_scale.{key}={value!r} cannot train: write ')
  # Other precisions do not scale the loss: the value is not theirs to refuse.
  assert config_lib.train_spec(tiny_config(tmp_path / 'data', **{
      f'loss_scale.{key}': value})).loss_scale is None


def test_micro_batches_of_one_image_are_refused(tmp_path, no_training):
  message = refused(tiny_config(tmp_path / 'data', batch_size=2, accumulate_steps=2,
                                batch_per_replica=1), tmp_path)
  assert message.startswith('config.batch_size=2 with config.accumulate_steps=2 on 1 device '
                            'trains on one image at a time')
  assert 'gap_conv' in message and 'raise config.batch_size' in message


@pytest.mark.parametrize('name, where', [
    ('bisenetv1_r18', 'backbone_net/context_path/gap_conv.2'),
    ('bisenetv2', 'backbone_net/semantic/stage4_CEBlock/gap.1'),
    ('fastscnn', 'backbone_net/global_feature_extractor/ppm.0.2'),
])
def test_batch_norms_after_a_global_pooling_are_found_by_tracing(name, where):
  """Each network's context (BiSeNetV1's context path, BiSeNetV2's context embedding,
  Fast-SCNN's pyramid pooling's 1x1 bin) normalises one value per channel and image."""
  assert name in NETWORKS
  found = loop.single_value_norms(models.build(ModelSpec(name, 3)), (64, 64))
  assert where in found


def test_micro_batches_of_two_images_are_accepted():
  spec = config_lib.train_spec(tiny_config('unused', batch_size=4, accumulate_steps=2))
  loop.check_micro_batch(spec, None, 1)  # Never traces the model.


def metrics(*skipped):
  return [{'skipped': float(s), 'loss_scale': 2.0**-30} for s in skipped]


def test_skips_in_a_row_are_counted_across_log_windows():
  assert loop.skips_in_a_row(metrics(1, 0, 1, 1), 0, 4) == 2
  assert loop.skips_in_a_row(metrics(1, 1), 2, 5) == 4
  assert loop.skips_in_a_row(metrics(0, 1), 4, 5) == 1
  with pytest.raises(loop.TrainingDiverged) as error:
    loop.skips_in_a_row(metrics(1, 1, 0), 3, 5)
  message = str(error.value)
  assert message.startswith('the last 5 steps were all skipped') and '\n' not in message
  assert 'config.loss_scale.max_consecutive_skips=5' in message


@pytest.mark.slow
def test_a_float16_run_whose_every_step_is_skipped_stops(tmp_path):
  # The scale barely falls from 2**100, so every step overflows: as a NaN loss would.
  config = tiny_config(tmp_path / 'data', **{
      'model.dtype': 'float16', 'loss_scale.init_scale': 2.0**100,
      'loss_scale.backoff_factor': 0.9999, 'loss_scale.max_consecutive_skips': 3,
      'total_steps': 20})
  with pytest.raises(loop.TrainingDiverged, match='the last 3 steps were all skipped'):
    loop.train_and_evaluate(config, tmp_path / 'run')
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text()
          .splitlines()]
  assert [row['step'] for row in rows] == [2, 4] and [row['skipped'] for row in rows] == [2, 2]
