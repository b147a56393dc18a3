"""Tests of the PyTorch references for BiSeNetV2 and Fast-SCNN
(bisenet_jax/bench/torch_models/bisenetv2.py and fastscnn.py) that run without sssegmentation.

Their float64 outputs (eval and train mode) and BatchNorm updates equal the package's recorded
goldens exactly (tests/test_goldens_networks.py, docs/reference.md §15); these tests pin the
rest: the recorded official key lists, the output strides and widths, and that the tests'
`randomize_` covers every tensor.
"""

from pathlib import Path

import pytest
import torch

from bisenet_jax.bench.torch_models import bisenetv2, fastscnn
from torch_support import randomize_, read_key_list

DATA = Path(__file__).parent / 'data'
H, W = 97, 203

# network: (module, key-list file, main-head stride, aux-head strides in loss_aux1.. order,
#           {feature name: (stride, channels)}; channels None = num_classes).
NETWORKS = {
  'bisenetv2': (
    bisenetv2,
    'ssseg_fcn_bisenetv2_state_dict.txt',
    8,
    (4, 8, 16, 32),
    {
      'detail': (8, 128),
      'stage1': (4, 16),
      'stage2': (8, 32),
      'stage3': (16, 64),
      'stage4': (32, 128),
      'ce': (32, 128),
      'bga': (8, 128),
      'logits': (8, None),
    },
  ),
  'fastscnn': (
    fastscnn,
    'ssseg_depthwiseseparablefcn_fastscnn_state_dict.txt',
    8,
    (8, 32),
    {
      'higher_res': (8, 64),
      'bottleneck1': (16, 64),
      'bottleneck2': (32, 96),
      'bottleneck3': (32, 128),
      'ppm': (32, 256),
      'lower_res': (32, 128),
      'fusion': (8, 128),
      'logits': (8, None),
    },
  ),
}


def _image(n, seed=0):
  return torch.randn(n, 3, H, W, generator=torch.Generator().manual_seed(seed))


def _strided(n, channels, stride):
  """Shape of an NCHW map at `stride` of the H x W input (every halving in these nets is a ceil)."""
  return (n, channels, -(-H // stride), -(-W // stride))


@pytest.fixture(scope='module', params=sorted(NETWORKS))
def network(request):
  """(name, randomized model in eval mode), built once per network for this module."""
  module = NETWORKS[request.param][0]
  return request.param, randomize_(module.build_reference(), seed=0).eval()


def test_state_dict_matches_key_list_exactly(network):
  name, model = network
  expected, _ = read_key_list(DATA / NETWORKS[name][1])
  assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == expected


def test_parameter_count_matches_key_list_header(network):
  name, model = network
  _, n_params = read_key_list(DATA / NETWORKS[name][1])
  assert sum(p.numel() for p in model.parameters()) == n_params


@torch.no_grad()
def test_eval_returns_main_logits_at_stride_8(network):
  name, model = network
  logits = model(_image(2))
  assert tuple(logits.shape) == _strided(2, 19, NETWORKS[name][2])
  assert torch.isfinite(logits).all()


@torch.no_grad()
def test_train_returns_main_and_aux_logits_at_their_strides(network):
  name, model = network
  _, _, main_stride, aux_strides, _ = NETWORKS[name]
  model.train()
  try:
    # A batch of 2: BiSeNetV2's CE block has BatchNorm on a 1x1 map, which needs N > 1 to train.
    outs = model(_image(2))
  finally:
    model.eval()
  assert isinstance(outs, tuple)
  assert [tuple(o.shape) for o in outs] == [
    _strided(2, 19, s) for s in (main_stride, *aux_strides)
  ]


@torch.no_grad()
def test_forward_features_names_strides_and_channels(network):
  name, model = network
  module, _, _, _, features = NETWORKS[name]
  feats = model.forward_features(_image(1))
  assert tuple(feats) == module.FEATURE_NAMES == tuple(features)
  for key, (stride, channels) in features.items():
    assert tuple(feats[key].shape) == _strided(1, channels or 19, stride), key
  assert torch.equal(feats['logits'], model(_image(1)))


@pytest.mark.parametrize('name', sorted(NETWORKS))
def test_randomize_fills_every_tensor_deterministically(name):
  module = NETWORKS[name][0]
  default = module.build_reference().state_dict()
  first = randomize_(module.build_reference(), seed=3).state_dict()
  second = randomize_(module.build_reference(), seed=3).state_dict()
  unchanged = [k for k in default if torch.equal(default[k], first[k])]
  assert not unchanged
  assert all(torch.equal(first[k], second[k]) for k in first)
