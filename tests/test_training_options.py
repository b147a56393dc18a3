"""sssegmentation's training options (docs/reference.md §9): EMA, float16 loss scaling, gradient
accumulation, the loss table in training, and their one-line config errors.

EMA and the loss scale are checked against their PyTorch definitions (the toolbox's EMA update
over the whole state dict, GradScaler); accumulation against the same micro-batches run by hand;
the losses themselves in tests/test_loss_functions.py.
"""

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from bisenet_jax.errors import UserError
from bisenet_jax.eval import evaluator
from bisenet_jax.interop import layout
from bisenet_jax.models import layers
from bisenet_jax.specs import NETWORKS, LossScaleSpec, ObjectiveSpec
from bisenet_jax.train import config as config_lib
from bisenet_jax.train import loop, losses, optim
from bisenet_jax.train import state as state_lib
from bisenet_jax.train import step as step_lib
from bisenet_jax.train.loss_scale import LossScale

SIZE = 32
V1_HEADS = NETWORKS['bisenetv1_r18'].head_names


def tiny_batch(count=4, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (count, SIZE, SIZE, 3), np.uint8),
          'label': rng.choice([0, 1, 2, 255], (count, SIZE, SIZE)).astype(np.uint8),
          'content': np.tile(np.array([0, 0, SIZE, SIZE], np.int32), (count, 1))}


class TinySegmentor(layers.ConvNormModule):
  """The segmentor's interface (main logits; in training also two aux heads' logits) on a conv
  and a BatchNorm: the step's options checked in milliseconds, well away from float32's limits
  (BiSeNet's stem gradients at random init differ by tens of percent between two float32
  evaluation orders)."""
  num_classes: int = 3

  @nn.compact
  def __call__(self, images, train=False):
    x = layers.relu(self.conv_bn(images, 8, 3, 2, names=('conv', 'bn'), train=train))
    logits = self.conv(self.num_classes, 1, in_features=8, use_bias=True, name='head')(x)
    if not (train or self.is_initializing()):
      return logits
    aux = self.conv(self.num_classes, 1, in_features=8, use_bias=True, name='aux')(x)
    return logits, aux, aux[:, ::2, ::2]


@pytest.fixture(scope='module')
def model():
  return TinySegmentor()


def make_state(model, tx=None, **options):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  return state_lib.create_train_state(model, tx or optim.make_optimizer(0.01), jax.random.key(0),
                                      mesh, **options)


def run_step(state, batch, learning_rate_fn=lambda step: 0.01, **options):
  objective = losses.make_objective(ObjectiveSpec.reference(NETWORKS['bisenetv1_r18']))
  return step_lib.train_step(state, batch, learning_rate_fn=learning_rate_fn, dropout_seed=0,
                             objective=objective, **options)


# EMA.

def torch_ema_update(ema_state: dict, state: dict, momentum: float) -> dict:
  """The toolbox's EMA update (ssseg's ema.py): every state-dict entry, parameters and buffers,
  ema <- ema * (1 - momentum) + momentum * current."""
  return {key: ema_state[key] * (1 - momentum) + momentum * state[key] for key in ema_state}


def state_dict(variables) -> dict:
  return {k: torch.from_numpy(np.asarray(v, np.float64))
          for k, v in layout.variables_to_state_dict(jax.device_get(variables)).items()
          if not k.endswith('num_batches_tracked')}


def test_ema_follows_the_toolbox_update_over_parameters_and_statistics(model):
  momentum = 0.25
  state = make_state(model, ema=True)
  expected = state_dict(state.ema)
  for seed in range(2):
    state, _ = jax.jit(lambda s, b: run_step(s, b, ema_momentum=momentum))(state, tiny_batch(
        seed=seed))
    expected = torch_ema_update(expected, state_dict(state.variables()), momentum)
  got = state_dict(state.ema)
  assert got.keys() == expected.keys() and 'bn.running_var' in got
  for key in got:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-7, err_msg=key)
  assert not np.allclose(got['head.weight'], state_dict(state.variables())['head.weight'])


# float16 loss scaling.

def test_loss_scale_follows_torch_grad_scaler():
  spec = LossScaleSpec(init_scale=8.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=3)
  ours = LossScale.create(spec)
  parameter = torch.nn.Parameter(torch.zeros(2))
  optimizer = torch.optim.SGD([parameter], lr=0.1)
  scaler = torch.amp.GradScaler('cpu', init_scale=8.0, growth_factor=2.0, backoff_factor=0.5,
                                growth_interval=3)
  for finite in [True, True, True, False, True, True, True, True, False, False, True]:
    optimizer.zero_grad()
    scaler.scale(parameter.sum()).backward()
    if not finite:
      parameter.grad[0] = float('inf')
    scaler.step(optimizer)
    scaler.update()
    ours = ours.updated(jnp.asarray(finite))
    assert float(ours.scale) == scaler.get_scale()


@pytest.mark.slow  # The quick tier skips steps in the learning-rate test.
def test_float16_step_skips_an_overflow_and_keeps_the_weights(model):
  state = make_state(model.clone(dtype=jnp.float16),
                     loss_scale=LossScaleSpec(init_scale=2.0**40))  # Overflows float16.
  new_state, metrics = jax.jit(run_step)(state, tiny_batch())
  assert float(metrics['skipped']) == 1.0 and float(metrics['loss_scale']) == 2.0**40
  assert float(new_state.loss_scale.scale) == 2.0**39 and int(new_state.step) == 1
  same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), new_state.params, state.params)
  assert all(jax.tree.leaves(same))
  state = make_state(model.clone(dtype=jnp.float16), loss_scale=LossScaleSpec(init_scale=8.0))
  new_state, metrics = jax.jit(run_step)(state, tiny_batch())
  assert float(metrics['skipped']) == 0.0 and np.isfinite(float(metrics['loss']))
  assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                              new_state.params, state.params)))


def test_skipped_float16_steps_move_the_learning_rate_schedule_on(model):
  """After k skipped steps the lr applied is the schedule's at step k, as logged: GradScaler
  skips ``optimizer.step()`` but the toolbox's scheduler sets the lr from the iteration count."""
  schedule = optim.poly_warmup_schedule(base_lr=0.1, total_steps=10, min_lr=0.0, warmup_steps=0)
  # Skipped steps leave the momentum trace at zero, and without weight decay the first
  # applied update is exactly -lr * gradients.
  tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=0.0)
  # 2**40, 2**30 and 2**20 overflow float16's gradients; 2**10 does not.
  state = make_state(model.clone(dtype=jnp.float16), tx,
                     loss_scale=LossScaleSpec(init_scale=2.0**40, backoff_factor=2.0**-10))
  step = jax.jit(functools.partial(run_step, learning_rate_fn=schedule))
  skipped = []
  for seed in range(4):
    before = state.params
    state, metrics = step(state, tiny_batch(seed=seed))
    skipped.append(float(metrics['skipped']))
  assert skipped == [1.0, 1.0, 1.0, 0.0]
  moved = optax.tree.norm(jax.tree.map(jnp.subtract, state.params, before))
  applied = float(moved) / float(metrics['grad_norm'])
  assert applied == pytest.approx(float(metrics['lr']), rel=1e-5)
  assert float(metrics['lr']) == pytest.approx(float(schedule(3)), rel=1e-6)
  assert float(schedule(3)) < 0.8 * float(schedule(0))  # A real change of lr to detect.


# Gradient accumulation.

@pytest.mark.slow  # Two compiled steps; the slow whole run with every option covers it too.
def test_accumulated_step_equals_its_micro_batches_run_by_hand(model):
  state = make_state(model)
  batch = tiny_batch(count=4, seed=3)
  got, metrics = jax.jit(lambda s, b: run_step(s, b, accumulate_steps=2))(state, batch)

  # By hand: micro-batch i is rows i, i + 2 (each device keeps its rows); BatchNorm's running
  # statistics go through both; the gradients are averaged; one optimizer step.
  from bisenet_jax.data.normalization import normalize_on_device
  images = normalize_on_device(batch['image'], batch['content'])
  batch_stats, grads, total = state.batch_stats, [], 0.0
  for index in range(2):
    rows = np.arange(index, 4, 2)
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), index)

    def loss_fn(params, batch_stats=batch_stats, rows=rows, rng=rng):
      outputs, updates = model.apply({'params': params, 'batch_stats': batch_stats},
                                     images[rows], train=True, rngs={'dropout': rng},
                                     mutable=['batch_stats'])
      value = losses.segmentation_losses(outputs, batch['label'][rows], V1_HEADS)['loss']
      return value, updates['batch_stats']

    (value, batch_stats), grad = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads.append(grad)
    total += value / 2
  mean_grads = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
  expected = state.apply_gradients(grads=mean_grads, batch_stats=batch_stats)
  assert float(metrics['loss']) == pytest.approx(float(total), rel=1e-5)
  for name, a, b in (('params', got.params, expected.params),
                     ('batch_stats', got.batch_stats, expected.batch_stats)):
    difference = max(float(jnp.max(jnp.abs(x - y))) for x, y in
                     zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert difference < 1e-6, name


# The loss table in training.

@pytest.mark.parametrize('name,use_sigmoid,scales', [
    ('bisenetv1_r18', False, (1.0, 1.0, 1.0)), ('bisenetv2', False, (1.0,) * 5),
    ('fastscnn', True, (1.0, 0.4, 0.4))])
def test_every_reference_objective_takes_the_fused_form(name, use_sigmoid, scales):
  reference = ObjectiveSpec.reference(NETWORKS[name], replicas=8)
  objective = losses.make_objective(reference)
  assert objective.func is losses.segmentation_losses
  assert objective.keywords == {'heads': NETWORKS[name].head_names, 'use_sigmoid': use_sigmoid,
                                'scale_factors': scales, 'replicas': 8}
  table = dataclasses.replace(reference, sampler={
      'type': 'OHEMPixelSampler', 'thresh': 0.7, 'min_kept_per_image': 10})
  assert not isinstance(losses.make_objective(table), functools.partial)


def test_fused_sigmoid_cross_entropy_equals_the_toolbox_form_value_and_gradient():
  """Fast-SCNN's objective (sigmoid cross-entropy, auxiliary heads x0.4) in the fused form and
  through the toolbox's loss table: the same losses and gradients, at an odd size."""
  rng = np.random.default_rng(1)
  outputs = tuple(jnp.asarray(rng.normal(size=(2, h, w, 5)), jnp.float32)
                  for h, w in ((7, 9), (7, 9), (2, 3)))
  labels = jnp.asarray(rng.choice([0, 1, 2, 3, 4, 255], (2, 53, 69)), jnp.uint8)
  reference = ObjectiveSpec.reference(NETWORKS['fastscnn'])
  general = dataclasses.replace(reference, losses=tuple(
      (head, (*table, {'type': 'DiceLoss', 'scale_factor': 0.0})) for head, table in
      reference.losses))  # A zero-weight extra loss: the same objective, not fusable.
  fused, unfused = losses.make_objective(reference), losses.make_objective(general)
  assert not isinstance(unfused, functools.partial)
  values = [jax.jit(f)(outputs, labels) for f in (fused, unfused)]
  for key, value in values[0].items():
    assert float(value) == pytest.approx(float(values[1][key]), rel=1e-5), key
  grads = [jax.jit(jax.grad(lambda o, f=f: f(o, labels)['loss']))(outputs)
           for f in (fused, unfused)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, atol=1e-7, rtol=1e-4)


def test_plain_cross_entropy_through_the_table_equals_the_fast_form():
  rng = np.random.default_rng(0)
  outputs = tuple(jnp.asarray(rng.normal(size=(2, size, size, 5)), jnp.float32)
                  for size in (8, 8, 4))
  labels = jnp.asarray(rng.choice([0, 1, 2, 3, 4, 255], (2, 64, 64)), jnp.uint8)
  explicit = ObjectiveSpec(tuple((head, ({'type': 'CrossEntropyLoss', 'scale_factor': 1.0},
                                         {'type': 'DiceLoss', 'scale_factor': 0.0}))
                                 for head in V1_HEADS))
  fast = losses.segmentation_losses(outputs, labels, V1_HEADS)
  table = losses.make_objective(explicit)(outputs, labels)
  for key in fast:
    assert float(table[key]) == pytest.approx(float(fast[key]), rel=1e-5)


# The loss of the reference's DistributedDataParallel replicas.

TOOLBOX_TABLE = ObjectiveSpec(
    (('loss_cls', ({'type': 'CrossEntropyLoss'}, {'type': 'LovaszLoss'})),
     ('loss_aux1', ({'type': 'LovaszLoss'},))),
    {'type': 'OHEMPixelSampler', 'thresh': 0.7, 'min_kept_per_image': 20})
PLAIN_TABLE = ObjectiveSpec((('loss_cls', ({'type': 'CrossEntropyLoss'},)),
                             ('loss_aux1', ({'type': 'CrossEntropyLoss', 'scale_factor': 0.4},))))


def padded_batch(count: int, seed: int = 0):
  """Logits of two heads and labels whose images are padded unevenly (ignored bands of 0 to
  12 of 16 rows), so that one mean over the batch and the mean of the replicas' means differ.
  The first half of the images is nearly solved, so a batch-wide OHEM ranking differs too."""
  rng = np.random.default_rng(seed)
  labels = rng.choice([0, 1, 2], (count, 16, 16)).astype(np.uint8)
  for index, rows in enumerate(np.linspace(0, 12, count).astype(int)):
    labels[index, 16 - rows:] = 255
  # Noise keeps Lovasz's sorted errors free of ties, whose order (and so the gradient, not the
  # loss) rounding may swap.
  confident = (6.0 * np.eye(3)[np.where(labels == 255, 0, labels)]
               + 0.1 * rng.normal(size=(count, 16, 16, 3)))
  outputs = tuple(np.concatenate([confident[:count // 2, ::s, ::s],
                                  rng.normal(size=(count - count // 2, 16 // s, 16 // s, 3))
                                  ]).astype(np.float32) for s in (2, 4))
  return outputs, labels


@pytest.mark.parametrize('table', [PLAIN_TABLE, TOOLBOX_TABLE], ids=['fused', 'toolbox'])
def test_loss_is_the_mean_of_each_replicas_own_loss(table):
  """Each replica (2 consecutive images of 8) scored alone, then averaged, as DDP averages the
  GPUs' losses and gradients: not one mean (or one OHEM ranking) over the whole batch. In
  float64, where they agree to rounding."""
  with jax.enable_x64(True):
    replica_losses_and_grads(table)


def replica_losses_and_grads(table):
  outputs, labels = padded_batch(8)
  outputs = tuple(o.astype(np.float64) for o in outputs)
  value_and_grad = lambda spec: jax.jit(jax.value_and_grad(  # noqa: E731
      lambda o, l: losses.make_objective(spec)(o, l)['loss']))
  loss, grads = value_and_grad(dataclasses.replace(table, replicas=4))(outputs, labels)
  alone = [value_and_grad(table)(tuple(o[i:i + 2] for o in outputs), labels[i:i + 2])
           for i in range(0, 8, 2)]
  assert float(loss) == pytest.approx(np.mean([float(value) for value, _ in alone]), rel=1e-12)
  for head, grad in enumerate(grads):
    np.testing.assert_allclose(grad, np.concatenate([g[head] for _, g in alone]) / 4,
                               rtol=1e-10, atol=1e-15)
  whole_batch = float(value_and_grad(table)(outputs, labels)[0])
  assert abs(whole_batch - float(loss)) > 0.01 * float(loss)  # The difference told apart.


REPLICAS_ON_MESHES_SCRIPT = """
import dataclasses, json, sys
from bisenet_jax import parallel
parallel.setup()
import jax
import numpy as np
from bisenet_jax.train import losses
sys.path.insert(0, 'tests')
from test_training_options import PLAIN_TABLE, TOOLBOX_TABLE, padded_batch

outputs, labels = padded_batch(8)
outputs = tuple(o.astype(np.float64) for o in outputs)
found = {}
for name, table in (('fused', PLAIN_TABLE), ('toolbox', TOOLBOX_TABLE)):
  objective = losses.make_objective(dataclasses.replace(table, replicas=4))
  value_and_grad = jax.jit(jax.value_and_grad(lambda o, l: objective(o, l)['loss']))
  for devices in (1, 2, 4, 8):
    mesh = parallel.make_mesh(jax.devices()[:devices])
    loss, grads = value_and_grad(*jax.device_put((outputs, labels), parallel.batch_sharded(mesh)))
    found[f'{name}/{devices}'] = [float(loss), [np.asarray(g).tolist() for g in grads]]
print(json.dumps(found))
"""


def test_replicas_give_the_same_loss_on_every_device_count():
  """4 replicas of 2 images on 1, 2, 4 and 8 devices (8: a replica spans two devices), in float64
  so that only the order of additions may differ: the same losses and gradients."""
  import json

  from conftest import cpu_devices, run_cli
  result = run_cli('-c', REPLICAS_ON_MESHES_SCRIPT,
                   env={**cpu_devices(8), 'JAX_ENABLE_X64': '1'})
  assert result.returncode == 0, result.stderr[-3000:]
  found = json.loads(result.stdout.splitlines()[-1])
  for name in ('fused', 'toolbox'):
    one_loss, one_grads = found[f'{name}/1']
    for devices in (2, 4, 8):
      loss, grads = found[f'{name}/{devices}']
      assert loss == pytest.approx(one_loss, rel=1e-12), (name, devices)
      for got, want in zip(grads, one_grads):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15, err_msg=f'{name} {devices}')


# Config: every option off by default, bad values refused in one line.

def demo_config(**overrides):
  config = config_lib.get_config('bisenetv1_r18', 'demo')
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def test_options_are_off_by_default():
  spec = config_lib.train_spec(demo_config())
  # The demo's batch of 8 is 4 replicas of the recipe's 2 images.
  assert spec.objective == ObjectiveSpec.reference(NETWORKS['bisenetv1_r18'], replicas=4)
  assert spec.ema_momentum is None
  assert spec.accumulate_steps == 1 and spec.loss_scale is None
  spec = config_lib.train_spec(demo_config(**{'model.dtype': 'float16', 'ema.momentum': 0.0005}))
  assert spec.loss_scale == LossScaleSpec() and spec.ema_momentum == 0.0005


@pytest.mark.parametrize('overrides, message', [
    ({'losses.loss_cls': ({'type': 'CrossEntropyLos'},)}, 'CrossEntropyLos'),
    ({'losses.loss_aux1': ({'type': 'FocalLoss', 'gama': 2.0},)}, 'gama'),
    ({'losses.loss_cls': ({'type': 'CrossEntropyLoss', 'class_weight': (1.0, 2.0)},)},
     'class_weight'),
    ({'losses.loss_cls': ('CrossEntropyLoss',)}, 'is not a tuple of loss dicts'),
    ({'ema.momentum': -0.1}, 'config.ema.momentum=-0.1 must be in (0, 1]'),
    ({'ema.momentum': 1.5}, 'config.ema.momentum=1.5 must be in (0, 1]'),
    ({'ohem.thresh': 1.5}, 'thresh'),
    ({'accumulate_steps': 3}, 'config.accumulate_steps=3 must be a positive divisor of '
                              'config.batch_size=8'),
    ({'losses.loss_aux4': ({'type': 'CrossEntropyLoss'},)},
     'config.losses.loss_aux4 is set, but bisenetv1_r18 has the heads loss_cls, loss_aux1, '
     'loss_aux2'),
    ({'model.name': 'bisenetv3'}, "unknown network 'bisenetv3': choose one of bisenetv1_r18"),
    ({'model.name': 'fastscnn', 'model.stem': 'classic'},
     "model stem 'classic' does not fit fastscnn"),
])
def test_bad_options_are_one_line_errors(overrides, message):
  with pytest.raises(UserError) as error:
    config_lib.train_spec(demo_config(**overrides))
  assert message in str(error.value) and '\n' not in str(error.value)


def test_float16_on_a_tpu_and_micro_batches_devices_do_not_divide_are_refused():
  spec = config_lib.train_spec(demo_config(**{'model.dtype': 'float16'}))
  with pytest.raises(UserError, match='float16 does not run on TPUs'):
    loop.check_precision(spec, 'tpu')
  loop.check_precision(spec, 'gpu')
  spec = config_lib.train_spec(demo_config(accumulate_steps=2))  # Micro-batches of 4.
  with pytest.raises(UserError, match='the micro-batch of 4 .* is not divisible by the 8'):
    loop.check_batch_size(spec, type('Mesh', (), {'size': 8}))


# A whole run with every option.

WEIGHTS = tuple(float(w) for w in np.linspace(0.5, 2.0, 19))


def options_config(root, steps):
  return demo_config(**{
      'data.root': str(root), 'data.synthetic.num_train': 8, 'data.synthetic.num_val': 2,
      'data.synthetic.height': 64, 'data.synthetic.width': 128, 'data.resize_to': (64, 128),
      'data.crop_size': (64, 64), 'batch_size': 4, 'total_steps': steps,
      'optimizer.warmup_steps': 2, 'log_every_steps': 1, 'checkpoint_every_steps': 2,
      'eval_every_steps': 100, 'eval_batch_per_device': 2, 'model.dtype': 'float16',
      'ema.momentum': 0.3, 'ohem.thresh': 0.7, 'ohem.min_kept_per_image': 500,
      'accumulate_steps': 2, 'loss_scale.init_scale': 2.0**40,
      'loss_scale.backoff_factor': 2.0**-30,
      'losses.loss_cls': ({'type': 'CrossEntropyLoss', 'class_weight': WEIGHTS,
                           'label_smoothing': 0.1}, {'type': 'LovaszLoss', 'scale_factor': 0.5}),
      'losses.loss_aux1': ({'type': 'FocalLoss'},), 'losses.loss_aux2': ({'type': 'DiceLoss'},)})


@pytest.mark.slow
def test_a_run_with_every_option_resumes_exactly_and_its_ema_round_trips(tmp_path, capsys):
  import json
  import shutil

  from bisenet_jax import checkpoint, evaluate
  from bisenet_jax.bench.torch_models import bisenetv1 as torch_model
  from conftest import run_script

  loop.train_and_evaluate(options_config(tmp_path / 'data', 4), tmp_path / 'straight')
  def rows(workdir):
    return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]

  def losses_of(workdir):  # Every logged value but the timing.
    return [{k: v for k, v in r.items() if k != 'img_per_s'} for r in rows(workdir) if 'loss' in r]

  straight = losses_of(tmp_path / 'straight')
  assert len(straight) == 4 and {'skipped', 'loss_scale'} <= set(straight[0])
  assert straight[0]['skipped'] == 1.0 and straight[0]['loss'] is None  # 2**40 overflows.
  assert straight[1]['loss_scale'] == 2.0**10
  assert [r['skipped'] for r in straight[1:]] == [0.0, 0.0, 0.0]
  assert 'miou_ema' in rows(tmp_path / 'straight')[-1]

  # The same run stopped after its step-2 checkpoint and resumed.
  resumed = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'straight', resumed)
  shutil.rmtree(resumed / 'checkpoints' / '4')
  (resumed / 'metrics.jsonl').write_text(''.join(
      json.dumps(r) + '\n' for r in rows(tmp_path / 'straight') if r['step'] <= 2))
  loop.train_and_evaluate(options_config(tmp_path / 'data', 4), resumed)
  assert losses_of(resumed) == straight
  for ema in (False, True):
    a = checkpoint.restore_model(tmp_path / 'straight', ema)[1]
    b = checkpoint.restore_model(resumed, ema)[1]
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))

  # EMA and weights differ, and go to sssegmentation's .pth as model and model_ema.
  model_variables = checkpoint.restore_model(resumed, ema=False)[1]
  ema_variables = checkpoint.restore_model(resumed, ema=True)[1]
  assert not np.array_equal(model_variables['params']['decoder']['4']['kernel'],
                            ema_variables['params']['decoder']['4']['kernel'])
  result = run_script('convert/flax_to_ssseg.py', '--input', str(resumed), '--output',
                      str(tmp_path / 'ema.pth'))
  assert result.returncode == 0, result.stderr
  saved = torch.load(tmp_path / 'ema.pth', weights_only=True)
  reference = torch_model.build_reference('r18')
  for entry in ('model', 'model_ema'):
    reference.load_state_dict(saved[entry], strict=True)  # As sssegmentation's test.py --ema.
  result = run_script('convert/ssseg_to_flax.py', '--input', str(tmp_path / 'ema.pth'),
                      '--output', str(tmp_path / 'converted'))
  assert result.returncode == 0 and 'with its model_ema' in result.stdout, result.stderr
  for ema, expected in ((False, model_variables), (True, ema_variables)):
    got = checkpoint.restore_model(tmp_path / 'converted', ema)[1]
    assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), got,
                                            expected)))

  # evaluate takes the EMA unless told otherwise.
  root = tmp_path / 'data' / 'synthetic_cityscapes'
  capsys.readouterr()
  ema_scores = evaluate.main(['--checkpoint', str(resumed), '--data-root', str(root)])
  assert 'EMA weights' in capsys.readouterr().out
  model_scores = evaluate.main(['--checkpoint', str(resumed), '--data-root', str(root),
                                '--no-ema'])
  assert 'EMA weights' not in capsys.readouterr().out
  assert not np.array_equal(ema_scores['confusion'], model_scores['confusion'])


# Precision of float32 convolutions and matmuls.

def arithmetic_precisions(lowered_text: str) -> list[str]:
  """The precision of every convolution and matrix product in a lowered program, in order
  ('DEFAULT' where none is set: the backend's choice, TF32 on NVIDIA GPUs since Ampere)."""
  ops = re.findall(r'stablehlo\.(?:convolution|dot_general)[^\n]*', lowered_text)
  assert ops, 'the program has no convolution'
  return [(re.findall(r'precision(?:_config)? = \[(?:#stablehlo<precision )?(\w+)', op)
           or ['DEFAULT'])[0] for op in ops]


@pytest.mark.parametrize('precision, expected', [
    ('highest', 'HIGHEST'), ('tensorfloat32', 'HIGH'), ('default', 'DEFAULT')])
def test_training_step_runs_its_precision(model, precision, expected):
  """Full float32 by default, as the reference trains (TF32 off): every convolution and matmul
  of the step, forward and backward, asks for HIGHEST unless told otherwise."""
  step = step_lib.jit_train_step(
      jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',)), learning_rate_fn=lambda step: 0.01, dropout_seed=0,
      objective=losses.make_objective(ObjectiveSpec.reference(NETWORKS['bisenetv1_r18'])),
      **({} if precision == 'highest' else {'precision': precision}))
  assert set(arithmetic_precisions(step.lower(make_state(model), tiny_batch()).as_text())) == {
      expected}


def test_evaluation_runs_in_full_float32(model):
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
  segment = evaluator.make_segment_fn(model)
  lowered = segment.lower(variables, tiny_batch(1)['image'], out_size=(SIZE, SIZE))
  assert set(arithmetic_precisions(lowered.as_text())) == {'HIGHEST'}
  fast = evaluator.make_segment_fn(model, precision='default')
  lowered = fast.lower(variables, tiny_batch(1)['image'], out_size=(SIZE, SIZE))
  assert set(arithmetic_precisions(lowered.as_text())) == {'DEFAULT'}


@pytest.mark.parametrize('variant', ['', 'demo'])
def test_configs_train_in_full_float32(variant):
  config = config_lib.get_config('bisenetv1_r18', variant)
  assert config.precision == 'highest'
  with config.unlocked():
    config.precision = 'tf32'
    config.data.root = '/unused'
  with pytest.raises(UserError, match=r"config.precision='tf32' is not one of highest, "):
    config_lib.train_spec(config)
