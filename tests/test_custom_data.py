"""Your own data end to end: train, fine-tune to other classes, evaluate and predict.

The dataset is the synthetic garden set (the generic folder layout: JPEG images of two sizes,
palette PNG masks with ignored pixels, a classes.txt with colours), small enough for seconds.
"""

import json

import cv2
import jax
import numpy as np
import pytest
from flax import traverse_util

from bisenet_jax import checkpoint, models
from bisenet_jax.data import synthetic
from bisenet_jax.errors import UserError
from bisenet_jax.specs import ModelSpec
from bisenet_jax.train.config import train_spec
from bisenet_jax.train.initialization import initial_variables
from conftest import ROOT, run_cli

GARDEN = dict(num_train=16, num_val=4, height=96, width=128)
OVERRIDES = {'data.resize_to': (96, 128), 'data.crop_size': (96, 96), 'total_steps': 12,
             'optimizer.base_lr': 0.02, 'optimizer.warmup_steps': 2, 'log_every_steps': 1,
             'checkpoint_every_steps': 6, 'eval_every_steps': 100, 'eval_batch_per_device': 2}


@pytest.fixture(scope='module')
def garden(tmp_path_factory):
  return synthetic.write_synthetic_folder(tmp_path_factory.mktemp('garden') / 'garden', **GARDEN)


def garden_config(root, **extra):
  config = load_config('garden')
  config.data.root = str(root)
  for key, value in {**OVERRIDES, **extra}.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def load_config(variant):
  import importlib.util
  spec = importlib.util.spec_from_file_location('custom', ROOT / 'configs' / 'custom.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def as_flags(overrides: dict) -> list[str]:
  render = lambda v: f'({v[0]},{v[1]})' if isinstance(v, tuple) else str(v)
  return [f'--config.{k}={render(v)}' for k, v in overrides.items()]


def test_classes_follow_classes_txt_and_a_disagreeing_count_is_refused(garden):
  spec = train_spec(garden_config(garden))
  assert spec.model.num_classes == 5
  assert spec.data.dataset.classes == synthetic.GARDEN_CLASSES
  config = garden_config(garden, **{'model.num_classes': 19})
  with pytest.raises(UserError, match=r'num_classes=19 but .*classes.txt lists 5 classes'):
    train_spec(config)


def write_cityscapes_checkpoint(path, arch='bisenetv1_r18'):
  """A 19-class model with random weights, as convert/ssseg_to_flax.py writes one."""
  variables = models.init_variables(models.build(ModelSpec(arch, 19)), jax.random.key(7))
  variables = jax.tree_util.tree_map(
      lambda x: x + jax.random.normal(jax.random.key(x.size), x.shape), variables)
  checkpoint.save_model(path, variables, ModelSpec(arch, 19))
  return variables


@pytest.mark.slow  # A whole fine-tuning run (other networks: tests/test_networks.py).
def test_fine_tuning_19_to_5_classes_loads_everything_but_the_three_classifiers(
    garden, tmp_path, capsys):
  loaded = write_cityscapes_checkpoint(tmp_path / 'cityscapes')
  spec = train_spec(garden_config(garden, **{'init.checkpoint': str(tmp_path / 'cityscapes')}))
  model = models.build(spec.model)
  variables = initial_variables(spec, model)
  fresh = models.init_variables(model, jax.random.key(spec.seed))

  got, old, new = (traverse_util.flatten_dict(v) for v in (variables, loaded, fresh))
  assert got.keys() == new.keys()
  classifiers = {key for key in got if key[1:-1] in models.classifier_paths(spec.model)}
  assert {'.'.join(key[1:]) for key in classifiers} == {
      f'{head}.{leaf}' for head in ('decoder.4', 'auxiliary_decoder.0.4',
                                    'auxiliary_decoder.1.4') for leaf in ('kernel', 'bias')}
  for key in got:
    expected = new[key] if key in classifiers else old[key]
    np.testing.assert_array_equal(got[key], expected, err_msg='/'.join(key))
  assert all(got[key].shape[-1] == 5 for key in classifiers)
  report = capsys.readouterr()
  assert (f'loaded {len(got) - 6} tensors; re-initialised auxiliary_decoder.0.4, '
          'auxiliary_decoder.1.4, decoder.4 (19 -> 5 classes)') in report.out + report.err


@pytest.mark.slow
def test_fine_tuning_from_another_architecture_is_refused(garden, tmp_path):
  write_cityscapes_checkpoint(tmp_path / 'r50', 'bisenetv1_r50')
  spec = train_spec(garden_config(garden, **{'init.checkpoint': str(tmp_path / 'r50')}))
  with pytest.raises(UserError, match='holds a bisenetv1_r50 model but config.model.name is '
                     'bisenetv1_r18'):
    initial_variables(spec, models.build(spec.model))


@pytest.mark.slow
def test_train_evaluate_and_predict_with_the_users_classes(garden, tmp_path):
  workdir = tmp_path / 'run'
  result = run_cli('train.py', '--config', 'configs/custom.py:garden', '--workdir', str(workdir),
                   f'--config.data.root={garden}', *as_flags(OVERRIDES))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  losses = [row['loss'] for row in rows if 'loss' in row]
  assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
  recorded = checkpoint.read_dataset(workdir, 5)
  assert recorded.kind == 'folder' and recorded.classes == synthetic.GARDEN_CLASSES

  # evaluate takes the dataset, its layout and class names from the checkpoint.
  output = tmp_path / 'results.json'
  result = run_cli('-m', 'bisenet_jax.evaluate', '--checkpoint', str(workdir),
                   '--data-root', str(garden), '--output', str(output),
                   '--save-predictions', str(tmp_path / 'predictions'))
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(output.read_text())
  assert results['class_names'] == list(synthetic.GARDEN_CLASSES.names)
  assert len(results['iou']) == 5 and results['images'] == GARDEN['num_val']
  assert all(name in result.stdout for name in synthetic.GARDEN_CLASSES.names)
  saved = sorted((tmp_path / 'predictions').rglob('*.png'))
  assert len(saved) == GARDEN['num_val']

  # predict colours masks with the classes' own colours.
  image = sorted((garden / 'images' / 'val').rglob('*.jpg'))[0]
  result = run_cli('-m', 'bisenet_jax.predict', '--checkpoint', str(workdir), str(image),
                   '--output', str(tmp_path / 'masks'))
  assert result.returncode == 0, result.stderr[-3000:]
  mask = cv2.cvtColor(cv2.imread(str(tmp_path / 'masks' / f'{image.stem}_mask.png')),
                      cv2.COLOR_BGR2RGB)
  colours = {tuple(c) for c in mask.reshape(-1, 3)}
  assert colours <= {tuple(c) for c in synthetic.GARDEN_CLASSES.palette.tolist()}
