"""The Flax model computes what the PyTorch reference computes, through the official file format.

Random weights and non-trivial BatchNorm statistics are saved by the reference in the official
training-checkpoint layout, converted with the command-line converter, loaded with
``load_pretrained`` and compared in fp32 (highest matmul precision): logits to 1e-4, every
block's activation, and train mode (outputs and updated running statistics).
"""

import copy

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from bisenet_jax.bench import torch_model
from bisenet_jax import load_pretrained
from conftest import run_cli
import torch_support

TOL = 1e-4
# Sown activations whose Flax name differs from the reference's (a sow may not reuse a child's name).
FLAX_NAMES = {'arm32': 'arm32_output', 'arm16': 'arm16_output', 'ffm': 'ffm_output'}


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def random_images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.fixture(scope='module')
def converted(tmp_path_factory, torch_threads):
  """arch -> (torch reference in eval mode, flax model, flax variables), converted once by
  convert/ssseg_to_flax.py from an official-format training checkpoint."""
  cache = {}

  def get(arch):
    if arch not in cache:
      cache[arch] = _convert(arch, tmp_path_factory.mktemp(arch))
    return cache[arch]

  return get


def _convert(arch, tmp):
  ref = torch_support.randomize_(torch_model.build_reference(arch), seed=1).eval()
  torch_support.save_official_checkpoint(ref, tmp / 'official.pth', kind='full')
  result = run_cli('convert/ssseg_to_flax.py', '--input', str(tmp / 'official.pth'),
                   '--output', str(tmp / 'flax'))
  assert result.returncode == 0, result.stderr
  assert f'bisenetv1_{arch}' in result.stdout
  model, variables = load_pretrained(tmp / 'flax')
  return ref, model, variables


def flax_intermediates(model, variables, images) -> dict[str, np.ndarray]:
  with jax.default_matmul_precision('highest'):
    _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
  flat = traverse_util.flatten_dict(state['intermediates'])
  by_name = {path[-1]: np.asarray(value[0]) for path, value in flat.items()}
  return {name: by_name[FLAX_NAMES.get(name, name)] for name in torch_model.FEATURE_NAMES}


# R18 at a multiple of 32 and at an odd size; R50 (4x the compute) at the odd size only: the
# slow tier (the quick one compares the train-mode outputs below).
@pytest.mark.parametrize('arch,size', [
    pytest.param('r18', (512, 1024), marks=pytest.mark.slow),
    pytest.param('r18', (481, 641), marks=pytest.mark.slow),
    pytest.param('r50', (481, 641), marks=pytest.mark.slow)])
def test_eval_logits_and_every_block_match(converted, arch, size):
  ref, model, variables = converted(arch)
  images = random_images((1, 3, *size))
  with torch.no_grad():
    expected = {k: nchw_to_nhwc(v) for k, v in ref.forward_features(torch.from_numpy(images)).items()}
  got = flax_intermediates(model, variables, images.transpose(0, 2, 3, 1))
  errors = {name: float(np.max(np.abs(got[name] - expected[name])))
            for name in torch_model.FEATURE_NAMES}
  print(arch, size, {k: f'{v:.2e}' for k, v in errors.items()})
  bad = {k: v for k, v in errors.items() if not v <= TOL * max(1.0, np.abs(expected[k]).max())}
  assert not bad, f'blocks differing from the reference: {bad}'
  with jax.default_matmul_precision('highest'):
    logits = model.apply(variables, images.transpose(0, 2, 3, 1), train=False)
  assert logits.shape == (1, -(-size[0] // 8), -(-size[1] // 8), 19)
  np.testing.assert_allclose(np.asarray(logits), expected['logits'], rtol=0, atol=TOL)


CLASSIFIERS = ('decoder.4.weight', 'auxiliary_decoder.0.4.weight', 'auxiliary_decoder.1.4.weight')


def test_train_mode_outputs_and_running_statistics_match(converted):
  """Train mode (batch statistics over 2 images) with the classifiers' weights scaled x40, so the
  logits are large and an error in the statistics shows against their scale.

  Two float32 programs differ by both of their roundings, so the Flax output is compared with
  the reference computed exactly (in float64): within 1e-4 of the logits' scale, and no less
  accurate than the reference's own float32 output (at most 2x its error). One-pass variances
  (E[x^2] - E[x]^2) were 7x less accurate than the reference here (3.8e-4).
  """
  arch = 'r18'  # R50 has the same layer types at 4x the cost.
  ref_eval, _, _ = converted(arch)
  ref = torch_model.build_reference(arch, dropout=0.0)
  state_dict = ref_eval.state_dict()
  for key in CLASSIFIERS:
    state_dict[key] = state_dict[key] * 40
  ref.load_state_dict(state_dict)
  ref.train()
  exact = copy.deepcopy(ref).double()
  from bisenet_jax import models
  from bisenet_jax.interop import ssseg
  _, variables = ssseg.convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
  model = models.build_model(f'bisenetv1_{arch}', dropout_rate=0.0)

  images = random_images((2, 3, 96, 160), seed=3)
  with torch.no_grad():
    expected = ref(torch.from_numpy(images))
    truth = exact(torch.from_numpy(images).double())
  with jax.default_matmul_precision('highest'):
    outputs, updates = model.apply(variables, images.transpose(0, 2, 3, 1), train=True,
                                   rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
  for name, got, want, true in zip(('logits', 'aux8', 'aux16'), outputs, expected, truth):
    got, want, true = np.asarray(got), nchw_to_nhwc(want), nchw_to_nhwc(true)
    scale = float(np.abs(true).max())
    ours, theirs = (float(np.max(np.abs(x - true))) / scale for x in (got, want))
    between = float(np.max(np.abs(got - want))) / scale
    print(f'train {name} (max |logit| {scale:.0f}), errors / scale: flax fp32 {ours:.1e}, '
          f'reference fp32 {theirs:.1e}, flax vs reference fp32 {between:.1e}')
    assert scale > 10, f'{name}: large logits expected, got {scale}'
    assert ours <= TOL and ours <= 2 * theirs, name

  # Running statistics (unbiased variance, momentum 0.1): as accurate as the reference's own.
  stats = lambda module: traverse_util.flatten_dict(ssseg.convert_state_dict(
      {k: v.numpy() for k, v in module.state_dict().items()})[1]['batch_stats'])
  got_stats = traverse_util.flatten_dict(updates['batch_stats'])
  want_stats, true_stats = stats(ref), stats(exact)
  before = traverse_util.flatten_dict(variables['batch_stats'])
  assert got_stats.keys() == want_stats.keys()
  changed = [p for p in got_stats if not np.allclose(want_stats[p], before[p])]
  assert len(changed) == len(got_stats)  # Every BN saw a batch and moved its statistics.
  errors = {p: (float(np.max(np.abs(got_stats[p] - true_stats[p]))),
                float(np.max(np.abs(want_stats[p] - true_stats[p])))) for p in got_stats}
  print('running stats, max |error|: flax fp32 %.1e, reference fp32 %.1e' % tuple(
      max(e[i] for e in errors.values()) for i in (0, 1)))
  for path, (ours, theirs) in errors.items():
    bound = max(2 * theirs, 1e-6 + 1e-5 * float(np.max(np.abs(true_stats[path]))))
    assert ours <= bound, ('/'.join(path), ours, theirs)
