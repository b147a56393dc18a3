"""Every network computes what its PyTorch reference computes, through the official file format.

Random weights and non-trivial BatchNorm statistics are saved by the reference in the official
training-checkpoint layout, converted with the command-line converter (which recognises the
network from the tensors), loaded with ``load_pretrained`` and compared in fp32 (highest matmul
precision): logits to 1e-4, every block's activation, at multiples of 32 and at odd sizes (where
ceil-mode halvings, adaptive pooling bins and resize coordinates show), and train mode (outputs
of every head and updated running statistics).
"""

import copy

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from bisenet_jax import load_pretrained, models
from bisenet_jax.bench import torch_models
from bisenet_jax.interop import ssseg
from bisenet_jax.specs import NETWORKS, ModelSpec
from conftest import run_script
import torch_support

TOL = 1e-4
# Sown activations whose Flax name differs from the reference's (a sow may not reuse a child's
# name).
FLAX_NAMES = {'arm32': 'arm32_output', 'arm16': 'arm16_output', 'ffm': 'ffm_output',
              'detail': 'detail_output', 'bga': 'bga_output',
              **{f'stage{i}': f'stage{i}_output' for i in range(1, 5)}}


def nchw_to_nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().numpy().transpose(0, 2, 3, 1)


def random_images(shape, seed=0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@pytest.fixture(scope='module')
def converted(tmp_path_factory, torch_threads):
  """name -> (torch reference in eval mode, flax model, flax variables), converted once by
  convert/ssseg_to_flax.py from an official-format training checkpoint."""
  cache = {}

  def get(name):
    if name not in cache:
      cache[name] = _convert(name, tmp_path_factory.mktemp(name))
    return cache[name]

  return get


def _convert(name, tmp):
  ref = torch_support.randomize_(torch_models.reference_builder(name)(), seed=1).eval()
  torch_support.save_official_checkpoint(ref, tmp / 'official.pth', kind='full')
  result = run_script('convert/ssseg_to_flax.py', '--input', str(tmp / 'official.pth'),
                      '--output', str(tmp / 'flax'))
  assert result.returncode == 0, result.stderr
  assert f'({name}, 19 classes' in result.stdout
  model, variables = load_pretrained(tmp / 'flax')
  return ref, model, variables


def flax_intermediates(model, variables, images, names) -> dict[str, np.ndarray]:
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['intermediates'])[1])
  with jax.default_matmul_precision('highest'):
    state = apply(variables, images)
  flat = traverse_util.flatten_dict(state['intermediates'])
  by_name = {path[-1]: np.asarray(value[0]) for path, value in flat.items()}
  return {name: by_name[FLAX_NAMES.get(name, name)] for name in names}


def check_every_block(converted, name, size):
  ref, model, variables = converted(name)
  images = random_images((1, 3, *size))
  with torch.no_grad():
    expected = {k: nchw_to_nhwc(v)
                for k, v in ref.forward_features(torch.from_numpy(images)).items()}
  names = torch_models.feature_names(name)
  got = flax_intermediates(model, variables, images.transpose(0, 2, 3, 1), names)
  errors = {block: float(np.max(np.abs(got[block] - expected[block]))) for block in names}
  print(name, size, {k: f'{v:.2e}' for k, v in errors.items()})
  bad = {k: v for k, v in errors.items() if not v <= TOL * max(1.0, np.abs(expected[k]).max())}
  assert not bad, f'blocks differing from the reference: {bad}'
  assert got['logits'].shape == (1, -(-size[0] // 8), -(-size[1] // 8), 19)
  np.testing.assert_allclose(got['logits'], expected['logits'], rtol=0, atol=TOL)


# The quick tier compares BiSeNetV2 and Fast-SCNN at an odd size; the slow tier every network at
# a multiple of 32 and at 481x641 (BiSeNetV1 R50 has the same layer types as R18 at 4x the cost).
@pytest.mark.parametrize('name', ['bisenetv2', 'fastscnn'])
def test_eval_logits_and_every_block_match_at_an_odd_size(converted, name):
  check_every_block(converted, name, (97, 203))


@pytest.mark.slow
@pytest.mark.parametrize('name,size', [
    ('bisenetv1_r18', (512, 1024)), ('bisenetv1_r18', (481, 641)), ('bisenetv1_r50', (481, 641)),
    ('bisenetv2', (512, 1024)), ('bisenetv2', (481, 641)), ('fastscnn', (512, 1024)),
    ('fastscnn', (481, 641))])
def test_eval_logits_and_every_block_match(converted, name, size):
  check_every_block(converted, name, size)


@pytest.mark.parametrize('name', ['bisenetv1_r18', 'bisenetv2', 'fastscnn'])
def test_train_mode_outputs_and_running_statistics_match(converted, name):
  """Train mode (batch statistics over 2 images) with the classifiers' weights scaled x40, so the
  logits are large and an error in the statistics shows against their scale.

  Two float32 programs differ by both of their roundings, so the Flax output is compared with
  the reference computed exactly (in float64): within 1e-4 of the logits' scale, and no less
  accurate than the reference's own float32 output (at most 2x its error). One-pass variances
  (E[x^2] - E[x]^2) were 7x less accurate than the reference here (3.8e-4).
  """
  ref_eval, _, _ = converted(name)
  ref = torch_models.reference_builder(name)(dropout=0.0)
  state_dict = ref_eval.state_dict()
  classifiers = models.classifier_paths(ModelSpec(name, 19))
  for path in classifiers:
    state_dict[f'{".".join(path)}.weight'] *= 40
  ref.load_state_dict(state_dict)
  ref.train()
  exact = copy.deepcopy(ref).double()
  _, variables = ssseg.convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()})
  model = models.build(ModelSpec(name, 19, dropout_rate=0.0))

  images = random_images((2, 3, 96, 160), seed=3)
  with torch.no_grad():
    expected = ref(torch.from_numpy(images))
    truth = exact(torch.from_numpy(images).double())
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)},
                                           mutable=['batch_stats']))
  with jax.default_matmul_precision('highest'):
    outputs, updates = apply(variables, images.transpose(0, 2, 3, 1))
  assert len(outputs) == len(expected) == len(NETWORKS[name].heads)
  for head, got, want, true in zip(NETWORKS[name].head_names, outputs, expected, truth):
    got, want, true = np.asarray(got), nchw_to_nhwc(want), nchw_to_nhwc(true)
    scale = float(np.abs(true).max())
    ours, theirs = (float(np.max(np.abs(x - true))) / scale for x in (got, want))
    between = float(np.max(np.abs(got - want))) / scale
    print(f'train {name} {head} (max |logit| {scale:.0f}), errors / scale: flax fp32 '
          f'{ours:.1e}, reference fp32 {theirs:.1e}, flax vs reference fp32 {between:.1e}')
    assert scale > 10, f'{head}: large logits expected, got {scale}'
    assert ours <= TOL and ours <= 2 * theirs, head

  # Running statistics (unbiased variance, momentum 0.1): as accurate as the reference's own.
  stats = lambda module: traverse_util.flatten_dict(ssseg.convert_state_dict(  # noqa: E731
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
