"""The networks against sssegmentation 1.7.0 itself: the golden outputs that
tests/goldens/record_networks.py recorded from the package (docs/reference.md §15).

Both sides start from the weights, images and labels of tests/goldens/draw.py; the JAX side gets
the weights through the official-checkpoint converter. Everything runs in float64, where two
correct programs differ only by the order of their float additions (1e-15 to 1e-11 relative,
measured), so the tolerances below sit a few times above the largest difference measured and
far below any real error: float32 weights in a float64 bilinear resize gave 1e-7, a wrong
padding, pooling bin or variance factor gives 1e-3 and more.
Dropout is off on both sides (the recording puts every Dropout2d in eval mode; here
``dropout_rate=0``), since the two frameworks draw different masks.
"""

import functools
import json

import jax
import numpy as np
import pytest

from bisenet_jax import models, parallel
from bisenet_jax.bench import torch_models
from bisenet_jax.data.normalization import normalization_table
from bisenet_jax.interop import layout, ssseg
from bisenet_jax.specs import NETWORKS, ModelSpec, ObjectiveSpec
from bisenet_jax.train import config as config_lib
from bisenet_jax.train import losses, optim
from bisenet_jax.train import state as state_lib
from bisenet_jax.train import step as step_lib
from conftest import ROOT, run_cli
from goldens import draw

GOLDENS = draw.DATA.parent / 'goldens'
FAMILY = list(draw.KEY_LISTS)
# Relative to the largest magnitude of the compared tensor (logits, statistics) or to the value
# (losses); the largest difference measured is 1.5e-11 (BiSeNetV1 R50's train-mode logits).
FORWARD_RTOL = 1e-10
# The training step: each digest number's error relative to its scale (draw.digest_scales), the
# losses' and the lr's relative to their value. Measured (1 and 8 devices alike): up to 6e-12
# (the parameters before BiSeNetV2's 1x1-map BatchNorm, where the gradient cancels most), and
# 3.7e-11 for BiSeNetV1 R50 (its ARM32, FFM-attention and gap convolutions: 2048-wide sums into
# BatchNorms over 16 values). A relative error of 1e-9 in one element of typical size moves its
# chunk's number by 1e-9 / sqrt(1024) ~ 3e-11 of the scale: caught for every network but R50,
# whose tolerance catches 1e-9 in an element 3x the typical size.
STEP_RTOL = 1.5e-11
STEP_RTOL_OF = {'bisenetv1_r50': 1e-10}


@functools.lru_cache(maxsize=None)
def golden(name: str) -> dict[str, np.ndarray]:
  with np.load(GOLDENS / f'{name}.npz') as recorded:
    return dict(recorded)


def as_float64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


@functools.lru_cache(maxsize=None)
def converted(name: str) -> tuple:
  """(model, float64 variables) from draw's state dict through the official converter."""
  spec, variables = ssseg.convert_state_dict(draw.state_dict(name), name)
  assert spec.name == name
  return models.build(ModelSpec(name, draw.NUM_CLASSES, dropout_rate=0.0, dtype='float64')), \
      as_float64(variables)


def relative_error(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def digest_error(name: str, variables, prefix: str) -> float:
  """The largest error of the recorded digests ``<prefix>/<key>`` of the change from draw's state
  dict to ``variables`` (``{'params', 'batch_stats'}``, either may be empty), relative to each
  digest number's scale (``draw.digest_scales``)."""
  want = golden(name)
  before = draw.state_dict(name)
  state = layout.variables_to_state_dict(variables)
  recorded = {k[len(prefix) + 1:] for k in want if k.startswith(prefix + '/')}
  compared = {k for k in state if not k.endswith('num_batches_tracked')}
  assert compared == recorded, sorted(compared ^ recorded)[:5]
  errors = []
  for key in compared:
    change = np.asarray(state[key], np.float64) - before[key]
    errors.append(np.max(np.abs(draw.digest(key, change) - want[f'{prefix}/{key}'])
                         / draw.digest_scales(change)))
  return float(max(errors))


def test_draw_normalises_as_the_project():
  np.testing.assert_array_equal(draw.normalization_table(), normalization_table())


@pytest.fixture(scope='module')
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize('name', FAMILY)
def test_forwards_match_the_reference(x64, name):
  """Eval-mode logits at 97x203; one train-mode forward of 2 images: every head's logits, the
  running statistics it leaves, and each head's loss (softmax or sigmoid cross-entropy, scaled)
  as the reference's loss functions compute it."""
  want = golden(name)
  model, variables = converted(name)
  images = draw.normalized(draw.forward_batch())
  labels = draw.forward_batch()['label']

  eval_logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  outputs, updates = train(variables, images)
  heads = NETWORKS[name].head_names
  objective = losses.make_objective(ObjectiveSpec.reference(NETWORKS[name]))
  got_losses = jax.jit(objective)(outputs, labels)

  errors = {'eval logits': relative_error(eval_logits, want['eval/logits'])}
  for head, logits in zip(heads, outputs, strict=True):
    errors[f'train {head}'] = relative_error(logits, want[f'train/logits/{head}'])
    errors[f'loss {head}'] = relative_error(got_losses[head], want[f'train/loss/{head}'])
  errors['running statistics'] = digest_error(
      name, {'params': {}, 'batch_stats': updates['batch_stats']}, 'train/stats')
  print(name, {k: f'{v:.1e}' for k, v in errors.items()})
  assert max(errors.values()) < FORWARD_RTOL, errors


@pytest.mark.parametrize('name', FAMILY)
def test_torch_transcriptions_match_the_reference(name):
  """The repository's PyTorch models (bench/torch_models) give the package's float64 outputs
  with the same weights, in eval and train mode, running statistics included."""
  import torch
  want = golden(name)
  model = torch_models.reference_builder(name)(dropout=0.0)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in draw.state_dict(name).items()})
  model = model.double()
  images = torch.from_numpy(draw.normalized(draw.forward_batch()).transpose(0, 3, 1, 2).copy())
  nhwc = lambda t: t.detach().numpy().transpose(0, 2, 3, 1)  # noqa: E731
  with torch.no_grad():
    errors = {'eval logits': relative_error(nhwc(model.eval()(images)), want['eval/logits'])}
    outputs = model.train()(images)
  for head, logits in zip(NETWORKS[name].head_names, outputs, strict=True):
    errors[f'train {head}'] = relative_error(nhwc(logits), want[f'train/logits/{head}'])
  drawn = draw.state_dict(name)
  errors['running statistics'] = max(
      float(np.max(np.abs(draw.digest(k, v.numpy() - drawn[k]) - want[f'train/stats/{k}'])
                   / draw.digest_scales(v.numpy() - drawn[k])))
      for k, v in model.state_dict().items() if k.endswith(('running_mean', 'running_var')))
  print(name, {k: f'{v:.1e}' for k, v in errors.items()})
  assert max(errors.values()) < FORWARD_RTOL, errors


@pytest.mark.parametrize('name', FAMILY)
def test_initialisation_draws_from_the_reference_distributions(name):
  """Every tensor of a fresh model (no ImageNet file) starts as the reference's: constants
  (BatchNorm's 1 and 0, running statistics) equal, and random tensors of 1,000 values or more
  with the same spread and range (PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) has std
  bound / sqrt(3): LeCun or Kaiming normal would be 1.7x or 2.4x off). The draws themselves
  differ: the frameworks' random streams are not the same."""
  want = golden(name)
  model = models.build(ModelSpec(name, draw.NUM_CLASSES))
  state = layout.variables_to_state_dict(models.init_variables(model, jax.random.key(0)))
  keys = [str(key) for key in want['init/keys']]
  assert set(keys) == {k for k in state if not k.endswith('num_batches_tracked')}
  compared = 0
  for key, (mean, std, absmax) in zip(keys, want['init/mean_std_absmax']):
    values = np.asarray(state[key], np.float64)
    if std == 0:
      np.testing.assert_array_equal(values, mean, err_msg=key)
    elif values.size >= 1000:
      compared += 1
      assert values.std() == pytest.approx(std, rel=0.1), key
      assert np.abs(values).max() == pytest.approx(absmax, rel=0.05), key
      assert abs(values.mean() - mean) < 6 * std / np.sqrt(values.size), key
  assert compared > 10


def test_the_digest_shows_an_error_of_1e_9_in_one_element():
  """A change shaped like a large kernel (typical elements, Gaussian): an error of 1e-9 relative
  to one element of typical size moves its chunk's digest number past STEP_RTOL of its scale,
  whichever element it is."""
  change = np.random.default_rng(0).standard_normal((64, 32, 3, 3)) * 1e-4
  expected, scales = draw.digest('k', change), draw.digest_scales(change)
  typical = np.sqrt(np.mean(change**2))
  for index in np.random.default_rng(1).choice(change.size, 20, replace=False):
    wrong = change.copy().ravel()
    wrong[index] += 1e-9 * typical
    moved = np.abs(draw.digest('k', wrong.reshape(change.shape)) - expected) / scales
    assert moved.max() > STEP_RTOL, index


def recipe(name: str):
  """The network's config file (``configs/*.py``), as training reads it."""
  return config_lib.load_config_file(str(ROOT / NETWORKS[name].config))


def step_errors(name: str) -> dict[str, float]:
  """One float64 training step of the JAX side on all the devices it sees (the batch sharded
  over them) against the reference's: relative errors of the lr, the losses, and the digests of
  the parameters' and running statistics' change."""
  want = golden(name)
  model, variables = converted(name)
  config = recipe(name)  # Its optimizer, schedule and losses, over its replicas.
  settings = config.optimizer
  schedule = optim.poly_warmup_schedule(settings.base_lr, config.total_steps, settings.min_lr,
                                        settings.power, settings.warmup_steps,
                                        settings.warmup_ratio, dtype='float64')
  tx = optim.make_optimizer(schedule, settings.momentum, settings.weight_decay)
  objective = config_lib.objective_spec(config, ModelSpec(name, draw.NUM_CLASSES))
  assert objective.replicas == draw.STEP_REPLICAS
  mesh = parallel.make_mesh()
  state = state_lib.create_train_state(model, tx, jax.random.key(0), mesh, variables=variables)
  step = step_lib.jit_train_step(mesh, learning_rate_fn=schedule, dropout_seed=0,
                                 objective=losses.make_objective(objective))
  new_state, metrics = step(state, draw.step_batch(name))
  errors = {'lr': relative_error(metrics['lr'], want['step/lr'])}
  for head in NETWORKS[name].head_names:
    errors[f'loss {head}'] = relative_error(metrics[head], np.mean(want[f'step/loss/{head}']))
  params, stats = jax.device_get((new_state.params, new_state.batch_stats))
  errors['parameters'] = digest_error(name, {'params': params, 'batch_stats': {}}, 'step/params')
  errors['running statistics'] = digest_error(name, {'params': {}, 'batch_stats': stats},
                                              'step/stats')
  return errors


def check_step(name: str, errors: dict[str, float], devices: int) -> None:
  print(f'{name} float64 training step on {devices} device(s), largest relative differences to '
        f'sssegmentation 1.7.0: {", ".join(f"{k} {v:.1e}" for k, v in errors.items())}')
  assert max(errors.values()) < STEP_RTOL_OF.get(name, STEP_RTOL), errors


# Fast-SCNN's step takes 25 s on one device; the others' 27 s (R18) to a minute go to the slow
# tier, as does every step on 8 simulated devices.
@pytest.mark.parametrize('name', [
    pytest.param(name, marks=[pytest.mark.slow] if name != 'fastscnn' else [])
    for name in FAMILY])
def test_one_training_step_matches_the_reference(x64, name):
  """A float64 SGD step of the whole model on the global batch of 8 replicas (SyncBN statistics
  over it, each replica's losses over its own rows, the reference's optimizer and lr)."""
  check_step(name, step_errors(name), 1)


# Every device holds the whole float64 train state: R50's step on 8 simulated devices peaks at
# 16.5 GB, more than a 24 GB machine has beside another test (`-n 2`); on 4 devices (2 replicas
# each) half that.
SHARDED_DEVICES = {'bisenetv1_r50': 4}


@pytest.mark.slow
@pytest.mark.parametrize('name', FAMILY)
def test_one_training_step_on_8_devices_matches_the_reference(name):
  """The same step with the batch sharded over 8 simulated devices, one replica each (R50: 4
  devices of 2 replicas)."""
  devices = SHARDED_DEVICES.get(name, 8)
  code = ('import json, sys, jax; sys.path.insert(0, "tests"); '
          'import test_goldens_networks as t; jax.config.update("jax_enable_x64", True); '
          f'print("ERRORS", json.dumps(t.step_errors({name!r})))')
  env = {'JAX_ENABLE_X64': '1', 'PYTHONPATH': str(ROOT),
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} '
                      '--xla_cpu_enable_concurrency_optimized_scheduler=false'}
  result = run_cli('-c', code, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  errors = json.loads(result.stdout.split('ERRORS ', 1)[1])
  check_step(name, errors, devices)
