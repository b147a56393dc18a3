"""The Flax model computes what the PyTorch reference computes, through the official file format.

Random weights and non-trivial BatchNorm statistics are saved by the reference in the official
training-checkpoint layout, converted with the command-line converter, loaded with
``load_pretrained`` and compared in fp32 (highest matmul precision): logits to 1e-4, every
block's activation, and train mode (outputs and updated running statistics).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from bisenet_jax.interop import torch_reference
from bisenet_jax import load_pretrained
from conftest import run_cli

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
  ref = torch_reference.randomize_(torch_reference.build_reference(arch), seed=1).eval()
  torch_reference.save_official_checkpoint(ref, tmp / 'official.pth', kind='full')
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
  return {name: by_name[FLAX_NAMES.get(name, name)] for name in torch_reference.FEATURE_NAMES}


# R18 at a multiple of 32 and at an odd size; R50 (4x the compute) at the odd size only.
@pytest.mark.parametrize('arch,size', [('r18', (512, 1024)), ('r18', (481, 641)),
                                       ('r50', (481, 641))])
def test_eval_logits_and_every_block_match(converted, arch, size):
  ref, model, variables = converted(arch)
  images = random_images((1, 3, *size))
  with torch.no_grad():
    expected = {k: nchw_to_nhwc(v) for k, v in ref.forward_features(torch.from_numpy(images)).items()}
  got = flax_intermediates(model, variables, images.transpose(0, 2, 3, 1))
  errors = {name: float(np.max(np.abs(got[name] - expected[name])))
            for name in torch_reference.FEATURE_NAMES}
  print(arch, size, {k: f'{v:.2e}' for k, v in errors.items()})
  bad = {k: v for k, v in errors.items() if not v <= TOL * max(1.0, np.abs(expected[k]).max())}
  assert not bad, f'blocks differing from the reference: {bad}'
  with jax.default_matmul_precision('highest'):
    logits = model.apply(variables, images.transpose(0, 2, 3, 1), train=False)
  assert logits.shape == (1, -(-size[0] // 8), -(-size[1] // 8), 19)
  np.testing.assert_allclose(np.asarray(logits), expected['logits'], rtol=0, atol=TOL)


def test_train_mode_outputs_and_running_statistics_match(converted):
  arch = 'r18'  # R50 has the same layer types at 4x the cost.
  ref_eval, _, _ = converted(arch)
  ref = torch_reference.build_reference(arch, dropout=0.0)
  ref.load_state_dict(ref_eval.state_dict())
  ref.train()
  from bisenet_jax import models
  from bisenet_jax.interop import ssseg
  _, variables = ssseg.convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
  model = models.build_model(f'bisenetv1_{arch}', dropout_rate=0.0)

  images = random_images((4, 3, 96, 160), seed=3)
  with torch.no_grad():
    expected = ref(torch.from_numpy(images))
  with jax.default_matmul_precision('highest'):
    outputs, updates = model.apply(variables, images.transpose(0, 2, 3, 1), train=True,
                                   rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
  for name, got, want in zip(('logits', 'aux8', 'aux16'), outputs, expected):
    want = nchw_to_nhwc(want)
    scale = max(1.0, float(np.abs(want).max()))
    print(f'train {name}: max |diff| {np.max(np.abs(np.asarray(got) - want)):.2e}, '
          f'max |logit| {scale:.1f}')
    # Batch statistics of 4 images (1x1 maps: 4 values per channel) amplify rounding, so the
    # tolerance is relative to the logits' scale.
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=TOL * scale, err_msg=name)

  _, updated = ssseg.convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
  got_stats = traverse_util.flatten_dict(updates['batch_stats'])
  want_stats = traverse_util.flatten_dict(updated['batch_stats'])
  before = traverse_util.flatten_dict(variables['batch_stats'])
  assert got_stats.keys() == want_stats.keys()
  changed = [p for p in got_stats if not np.allclose(want_stats[p], before[p])]
  assert len(changed) == len(got_stats)  # Every BN saw a batch and moved its statistics.
  print('running stats: max |diff|',
        max(float(np.max(np.abs(got_stats[p] - want_stats[p]))) for p in got_stats))
  for path in got_stats:
    np.testing.assert_allclose(np.asarray(got_stats[path]), want_stats[path], rtol=1e-5,
                               atol=1e-6, err_msg='/'.join(path))
