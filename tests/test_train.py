"""Training: configs, the jitted step on 1 vs 8 devices, a real short run, kill-and-resume,
errors."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from bisenet_jax import checkpoint, models
from bisenet_jax.errors import UserError
from bisenet_jax.specs import NETWORKS, SOURCE_KINDS, ModelSpec, ObjectiveSpec
from bisenet_jax.train import config as config_lib
from bisenet_jax.train import loop
from conftest import ROOT, cpu_devices, run_cli

CONFIG_FILES = sorted((ROOT / 'configs').glob('*.py'))


def load_config_file(path: Path, arg: str | None):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# Every config file with every variant it defines.
CONFIG_VARIANTS = [('r18.py', None), ('r18.py', 'demo'), ('r50.py', None), ('r50.py', 'demo'),
                   ('bisenetv2.py', None), ('bisenetv2.py', 'demo'), ('fastscnn.py', None),
                   ('fastscnn.py', 'demo'), ('custom.py', None), ('custom.py', 'garden'),
                   ('voc.py', None), ('ade20k.py', None)]


def test_the_variant_list_covers_every_config_file():
  assert {name for name, _ in CONFIG_VARIANTS} == {path.name for path in CONFIG_FILES}


@pytest.mark.parametrize('name,variant', CONFIG_VARIANTS)
def test_every_config_loads_builds_and_is_locked(name, variant):
  config = load_config_file(ROOT / 'configs' / name, variant)
  model = models.build(ModelSpec(config.model.name, config.model.num_classes or 5,
                                 config.model.stem, config.model.dropout_rate, config.model.dtype))
  abstract = models.abstract_variables(model)
  assert 'auxiliary_decoder' in abstract['params']
  assert config.data.source in SOURCE_KINDS and config.model.name in NETWORKS
  with pytest.raises(AttributeError):
    config.batch_szie = 8  # A typo must fail, not add a key.


@pytest.mark.parametrize('name', ['custom.py', 'voc.py', 'ade20k.py'])
@pytest.mark.parametrize('network', sorted(NETWORKS))
def test_the_dataset_configs_take_any_network_with_one_key(name, network):
  """``--config.model.name`` alone switches the network: its heads get its reference losses."""
  config = load_config_file(ROOT / 'configs' / name, None)
  config.model.name = network
  model = ModelSpec(network, config.model.num_classes or 5, config.model.stem)
  objective = config_lib.objective_spec(config, model)
  replicas = config.batch_size // config.batch_per_replica  # 16 / 4 (VOC, ADE20K), 8 / 8.
  assert objective == ObjectiveSpec.reference(NETWORKS[network], replicas)


def test_reference_recipe_values():
  config = config_lib.get_config('bisenetv1_r18')
  assert (config.batch_size, tuple(config.data.crop_size), config.total_steps) == (16, (1024, 1024),
                                                                                  159_960)
  assert config.optimizer.to_dict() == dict(base_lr=0.05, min_lr=1e-4, power=0.9,
                                            warmup_steps=1000, warmup_ratio=0.1, momentum=0.9,
                                            weight_decay=5e-4)
  # 8 GPUs x 2 images (Fast-SCNN 8 x 4), full float32.
  assert (config.batch_per_replica, config.precision) == (2, 'highest')
  assert load_config_file(ROOT / 'configs' / 'r50.py', None).total_steps == 159_960
  assert load_config_file(ROOT / 'configs' / 'bisenetv2.py', None).to_dict() == {
      **config.to_dict(), 'model': {**config.model.to_dict(), 'name': 'bisenetv2'},
      'init': {**config.init.to_dict(), 'backbone': 'none'}}  # From scratch, as the reference.
  fastscnn = load_config_file(ROOT / 'configs' / 'fastscnn.py', None)
  assert (fastscnn.batch_size, tuple(fastscnn.data.crop_size), fastscnn.total_steps,
          fastscnn.batch_per_replica) == (32, (512, 1024), 1750 * 93, 4)
  assert fastscnn.optimizer.to_dict() == dict(base_lr=0.12, min_lr=1e-4, power=0.9,
                                              warmup_steps=0, warmup_ratio=0.1, momentum=0.9,
                                              weight_decay=4e-5)
  with pytest.raises(UserError, match='variant'):
    config_lib.get_config('bisenetv1_r18', 'nope')


def tiny_overrides(root: Path, steps: int, **extra) -> dict:
  """A few-second R18 run on 64x128 synthetic scenes."""
  values = {
      'data.root': str(root), 'data.synthetic.num_train': 8, 'data.synthetic.num_val': 2,
      'data.synthetic.height': 64, 'data.synthetic.width': 128, 'data.resize_to': (64, 128),
      'data.crop_size': (64, 64), 'batch_size': 2, 'total_steps': steps,
      'optimizer.warmup_steps': 2, 'log_every_steps': 1, 'checkpoint_every_steps': 3,
      'eval_every_steps': 100, 'eval_batch_per_device': 2, **extra}
  return values


def tiny_config(root: Path, steps: int, **extra):
  config = config_lib.get_config('bisenetv1_r18', 'demo')
  for key, value in tiny_overrides(root, steps, **extra).items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def as_flags(overrides: dict) -> list[str]:
  render = lambda v: f'({v[0]},{v[1]})' if isinstance(v, tuple) else str(v)
  return [f'--config.{k}={render(v)}' for k, v in overrides.items()]


def read_rows(workdir: Path) -> list[dict]:
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow  # A whole run with its evaluation and checkpoint (about 40 s).
def test_short_run_lowers_the_loss_and_writes_everything(tmp_path):
  summary = loop.train_and_evaluate(tiny_config(tmp_path / 'data', 12, **{
      'optimizer.base_lr': 0.02}), tmp_path / 'run')
  rows = read_rows(tmp_path / 'run')
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert len(losses) == 12
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert {'loss_cls', 'loss_aux1', 'loss_aux2', 'lr', 'grad_norm', 'img_per_s'} <= set(rows[0])
  assert 'miou' in rows[-1] and rows[-1]['step'] == 12
  assert summary['step'] == 12 and 0 <= summary['miou'] <= 1
  assert (tmp_path / 'run' / 'checkpoints' / '12' / 'variables').is_dir()
  assert list((tmp_path / 'run' / 'tensorboard').glob('events.out.tfevents.*'))
  from bisenet_jax import load_pretrained
  model, _ = load_pretrained(tmp_path / 'run')  # A training workdir is a model checkpoint.
  assert model.depth == 18


def train_command(root: Path, workdir: Path, steps: int) -> list[str]:
  return [sys.executable, 'train.py', '--config', 'configs/r18.py:demo', '--workdir',
          str(workdir), *as_flags(tiny_overrides(root, steps))]


def final_params(workdir: Path):
  from bisenet_jax.checkpoint import restore_model
  return restore_model(workdir)[1]


@pytest.mark.slow
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
  steps = 9
  straight = subprocess.run(train_command(tmp_path / 'data', tmp_path / 'a', steps), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-2000:]

  killed = subprocess.Popen(train_command(tmp_path / 'data', tmp_path / 'b', steps), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while (not checkpoint.finalized_steps(tmp_path / 'b') and killed.poll() is None and
         time.time() < deadline):
    time.sleep(0.02)
  killed.send_signal(signal.SIGKILL)
  killed.wait()
  assert killed.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
  assert not (tmp_path / 'b' / 'checkpoints' / str(steps)).exists()

  resumed = subprocess.run(train_command(tmp_path / 'data', tmp_path / 'b', steps), cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resumed from' in resumed.stderr + resumed.stdout

  loss = lambda d: [(r['step'], r['loss']) for r in read_rows(d) if 'loss' in r]
  assert loss(tmp_path / 'b') == loss(tmp_path / 'a')  # Every step's loss, bit for bit.
  same = jax.tree_util.tree_map(lambda x, y: bool(np.array_equal(x, y)),
                                final_params(tmp_path / 'a'), final_params(tmp_path / 'b'))
  assert all(jax.tree_util.tree_leaves(same))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  process = subprocess.Popen(train_command(tmp_path / 'data', tmp_path / 'run', 500), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = tmp_path / 'run' / 'metrics.jsonl'
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count('\n') >= 2) and time.time() < deadline:
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output[-2000:]
  assert 'stopping at step' in output
  steps = [int(p.name) for p in (tmp_path / 'run' / 'checkpoints').iterdir() if p.name.isdigit()]
  assert max(steps) == read_rows(tmp_path / 'run')[-1]['step'] < 500


def demo_steps(workdir: Path, data_root: Path, devices: int, steps: int = 3) -> list[float]:
  """Per-step losses of the demo config (256x256 crops, batch 8) on ``devices`` CPU devices, in
  float64."""
  result = run_cli('train.py', '--config', 'configs/r18.py:demo', '--workdir', str(workdir),
                   f'--config.data.root={data_root}', f'--config.total_steps={steps}',
                   '--config.model.dtype=float64',
                   '--config.data.synthetic.num_train=24', '--config.data.synthetic.num_val=2',
                   '--config.eval_every_steps=100000', '--config.checkpoint_every_steps=100000',
                   '--config.log_every_steps=1',
                   env={**cpu_devices(devices), 'JAX_ENABLE_X64': '1'})
  assert result.returncode == 0, result.stderr[-3000:]
  return [row['loss'] for row in read_rows(workdir) if 'loss' in row]


def largest_difference(a: dict, b: dict) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.slow
def test_demo_on_eight_devices_trains_exactly_like_one_device(tmp_path):
  """The demo's real size on 8 simulated devices (XLA:CPU deadlocked here before parallel.setup
  turned its concurrency-optimized scheduler off): 3 steps give the same losses, parameters and
  running statistics as on 1 device.

  Sharding changes only the order of float additions, and float64 shows that it changes nothing
  else (measured: losses equal to 1e-15). float32 cannot show it: this network's float32
  gradients on a batch differ from float64's by ~3e-3 (relative, median over tensors) on 1
  device as on 8, and the two runs' losses drift apart by ~1e-3 by the third step.
  """
  one = demo_steps(tmp_path / 'one', tmp_path / 'data', 1)
  eight = demo_steps(tmp_path / 'eight', tmp_path / 'data', 8)
  assert len(one) == len(eight) == 3
  np.testing.assert_allclose(eight, one, rtol=1e-10)
  _, variables_one = checkpoint.restore_model(tmp_path / 'one')
  _, variables_eight = checkpoint.restore_model(tmp_path / 'eight')
  assert largest_difference(variables_one, variables_eight) < 1e-10


def test_batch_size_that_devices_do_not_divide_is_refused():
  config = config_lib.get_config('bisenetv1_r18', 'demo')
  config.batch_size = 12
  with pytest.raises(UserError, match='not divisible by the 8 devices'):
    loop.check_batch_size(config_lib.train_spec(config), types.SimpleNamespace(size=8))


def test_missing_data_root_names_the_layout_and_the_demo(tmp_path):
  result = run_cli('train.py', '--config', 'configs/r18.py', '--workdir', str(tmp_path / 'w'),
                   f'--config.data.root={tmp_path / "nowhere"}')
  assert result.returncode == 2
  message = result.stderr.strip().splitlines()[-1]
  assert 'leftImg8bit' in message and 'configs/r18.py:demo' in message
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('args, expected', [
    (['--config', 'configs/r18.py:demo', '--config.batch_szie=4'],
     'no key \'batch_szie\'. Did you mean "batch_size"'),
    (['--config', 'configs/r18.py:demoo'], "Unknown config variant 'demoo'"),
    (['--config', 'configs/nope.py'], "cannot load the config file 'configs/nope.py'"),
    (['--config', 'configs/r18.py:demo', '--config.batch_size=big'], 'flag --config.batch_size'),
    (['--config', 'configs/r18.py:demo', '--config.data.base_size=(512,256)'],
     'config.data.base_size is gone: use --config.data.resize_to=(HEIGHT,WIDTH)'),
])
def test_bad_command_line_is_one_line_without_traceback(args, expected):
  result = run_cli('train.py', *args)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ') and expected in lines[0], lines


def test_workdir_that_cannot_be_created_is_one_line(tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  workdir = tmp_path / 'file' / 'run'
  result = run_cli(*train_command(tmp_path / 'data', workdir, 2)[1:])
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and f'Cannot create the workdir {workdir}' in lines[0], lines


@pytest.mark.slow  # Builds the model before the file is matched (about 25 s).
def test_imagenet_file_matching_nothing_is_refused_before_training(tmp_path):
  import torch
  torch.save({'state_dict': {'head.weight': torch.zeros(3)}}, tmp_path / 'bad.pth')
  config = tiny_config(tmp_path / 'data', 2, **{'init.backbone': str(tmp_path / 'bad.pth')})
  with pytest.raises(UserError, match='matches no key'):
    loop.train_and_evaluate(config, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'checkpoints' / '2').exists()


@pytest.mark.slow  # A whole run.
def test_diverging_loss_stops_with_the_last_good_checkpoint(tmp_path):
  config = tiny_config(tmp_path / 'data', 9, **{'optimizer.base_lr': 1e30,
                                                'optimizer.warmup_steps': 0})
  with pytest.raises(loop.TrainingDiverged, match='loss became'):
    loop.train_and_evaluate(config, tmp_path / 'run')
  rows = read_rows(tmp_path / 'run')
  saved = [int(p.name) for p in (tmp_path / 'run' / 'checkpoints').glob('[0-9]*')]
  assert all(step < len(rows) + 1 for step in saved)
  for step in saved:
    assert all(np.isfinite(r['loss']) for r in rows if r['step'] <= step)


@pytest.mark.parametrize('name, replicas', [('r18.py', 8), ('fastscnn.py', 8), ('custom.py', 1)])
def test_the_loss_is_averaged_over_the_reference_replicas(name, replicas):
  """16 = 8 GPUs x 2 images, 32 = 8 x 4 (Fast-SCNN); one GPU for the small-data recipe."""
  config = load_config_file(ROOT / 'configs' / name, None)
  model = ModelSpec(config.model.name, config.model.num_classes or 5, config.model.stem)
  assert config_lib.objective_spec(config, model).replicas == replicas


def test_a_batch_that_does_not_split_into_replicas_is_refused():
  config = config_lib.get_config('bisenetv1_r18', 'demo')
  with config.unlocked():
    config.batch_size = 6
    config.batch_per_replica = 4
  with pytest.raises(UserError, match=r'^config.batch_per_replica=4 does not divide the 6 images '
                     r'of a forward pass .* --config.batch_per_replica=2\.$'):
    config_lib.train_spec(config)
