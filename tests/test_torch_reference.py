"""Tests of the PyTorch BiSeNetV1 (bisenet_jax/bench/torch_models/bisenetv1.py) and the tests'
PyTorch helpers (tests/torch_support.py) against docs/reference.md.

The reference is only useful for parity tests if it matches the official model's state-dict
layout exactly and computes what the spec says; these tests pin both.
"""

import math
from pathlib import Path

import pytest
import torch

from bisenet_jax.bench.torch_models.bisenetv1 import FEATURE_NAMES, ResNet, build_reference
from torch_support import (imagenet_state_dict, randomize_, read_key_list,
                           save_official_checkpoint)

DATA = Path(__file__).parent / 'data'
ARCHS = ('r18', 'r50')

# docs/reference.md §7.1: trainable parameters per part.
PART_PARAMS = {
  'r18': {
    'backbone_net.context_path.backbone_net': 11_195_744,
    'backbone_net.context_path.arm16': 311_808,
    'backbone_net.context_path.arm32': 606_720,
    'backbone_net.context_path.conv_head32': 147_712,
    'backbone_net.context_path.gap_conv': 65_792,
    'backbone_net.spatial_path': 91_968,
    'backbone_net.ffm': 132_096,
    'decoder': 595_219,
    'auxiliary_decoder': 150_182,
  },
  'r50': {
    'backbone_net.context_path.backbone_net': 23_527_264,
    'backbone_net.context_path.arm16': 4_982_784,
    'backbone_net.context_path.arm32': 9_701_376,
    'backbone_net.context_path.conv_head32': 2_360_320,
    'backbone_net.context_path.gap_conv': 1_049_600,
    'backbone_net.spatial_path': 1_350_912,
    'backbone_net.ffm': 2_101_248,
    'decoder': 9_458_707,
    'auxiliary_decoder': 2_370_086,
  },
}


def _key_list(arch):
  return read_key_list(DATA / f'ssseg_fcn_bisenetv1_{arch}_state_dict.txt')


def _num_params(module):
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _image(n, h, w, seed=0):
  return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope='module', params=ARCHS)
def arch_model(request):
  """(arch, randomized model in eval mode), built once per arch for this module."""
  return request.param, randomize_(build_reference(request.param), seed=0).eval()


def test_state_dict_matches_key_list_exactly(arch_model):
  arch, model = arch_model
  expected, _ = _key_list(arch)
  actual = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
  assert actual == expected


def test_parameter_counts(arch_model):
  arch, model = arch_model
  _, n_params = _key_list(arch)
  assert _num_params(model) == n_params
  for part, count in PART_PARAMS[arch].items():
    assert _num_params(model.get_submodule(part)) == count, part


@pytest.mark.parametrize('h, w', [(97, 130), (64, 64)])
def test_eval_output_follows_ceil_rule(arch_model, h, w):
  _, model = arch_model
  with torch.no_grad():
    logits = model(_image(1, h, w))
  assert logits.shape == (1, 19, math.ceil(h / 8), math.ceil(w / 8))


def test_eval_forward_equals_feature_logits(arch_model):
  _, model = arch_model
  x = _image(1, 64, 64)
  with torch.no_grad():
    feats = model.forward_features(x)
    logits = model(x)
  assert tuple(feats) == FEATURE_NAMES
  torch.testing.assert_close(logits, feats['logits'], rtol=0, atol=0)


def test_random_weights_keep_activations_order_one(arch_model):
  _, model = arch_model
  with torch.no_grad():
    feats = model.forward_features(_image(2, 64, 64))
  assert all(torch.isfinite(v).all() for v in feats.values())
  assert 0.1 < feats['logits'].std() < 100


@pytest.mark.parametrize('arch', ARCHS)
def test_train_mode_returns_main_and_aux_logits_at_their_strides(arch):
  model = build_reference(arch).train()  # batch 2: BN on 1x1 maps needs > 1 value per channel
  h, w = 97, 130
  with torch.no_grad():
    logits, aux8, aux16 = model(_image(2, h, w))
  s8 = (math.ceil(h / 8), math.ceil(w / 8))
  s16 = (math.ceil(h / 16), math.ceil(w / 16))
  assert logits.shape == (2, 19) + s8
  assert aux8.shape == (2, 19) + s8
  assert aux16.shape == (2, 19) + s16


def test_dropout2d_drops_whole_channels_in_train_mode():
  dropout = build_reference('r18').decoder[3].train()
  torch.manual_seed(0)
  per_channel = dropout(torch.ones(4, 256, 3, 5)).flatten(2)
  assert (per_channel == per_channel[..., :1]).all(), 'channels must be dropped whole'
  kept = per_channel[..., 0] != 0
  assert 0.8 < kept.float().mean() < 0.97
  torch.testing.assert_close(per_channel[..., 0][kept], torch.full((int(kept.sum()),), 1 / 0.9))
  assert torch.equal(dropout.eval()(torch.ones(1, 2, 3, 3)), torch.ones(1, 2, 3, 3))


def test_randomize_is_deterministic_and_touches_every_tensor():
  a = randomize_(build_reference('r18'), seed=3).state_dict()
  b = randomize_(build_reference('r18'), seed=3).state_dict()
  default = build_reference('r18').state_dict()
  for key in a:
    assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a[key], default[key]), key


def test_randomize_rejects_unknown_layers():
  with pytest.raises(TypeError, match='GroupNorm'):
    randomize_(torch.nn.Sequential(torch.nn.GroupNorm(2, 4)), seed=0)


@pytest.mark.parametrize('depth, n_tensors, width', [(18, 110, 512), (50, 275, 2048)])
def test_imagenet_state_dict_deep_stem(depth, n_tensors, width):
  state = imagenet_state_dict(depth, 'deep')
  body = [k for k in state if not k.startswith('fc.') and not k.endswith('num_batches_tracked')]
  assert len(body) == n_tensors
  assert state['stem.0.weight'].shape == (32, 3, 3, 3)
  assert state['fc.weight'].shape == (1000, width)
  assert state['fc.bias'].shape == (1000,)
  assert 'fc.weight' not in imagenet_state_dict(depth, 'deep', with_fc=False)


def test_imagenet_state_dict_classic_stem_differs_only_in_stem():
  deep = imagenet_state_dict(50, 'deep')
  classic = imagenet_state_dict(50, 'classic')
  assert classic['conv1.weight'].shape == (64, 3, 7, 7)
  assert {k for k in deep if not k.startswith('stem.')} == {
    k for k in classic if not k.startswith(('conv1.', 'bn1.'))
  }


@pytest.mark.parametrize(
  'depth, widths', [(34, (64, 128, 256, 512)), (101, (256, 512, 1024, 2048))]
)
def test_resnet_stages(depth, widths):
  resnet = ResNet(depth).eval()
  with torch.no_grad():
    stages = resnet(_image(1, 64, 64))
  assert [(s.shape[1], s.shape[2]) for s in stages] == list(zip(widths, (16, 8, 4, 2)))


def test_full_checkpoint_round_trip(tmp_path):
  model = randomize_(build_reference('r18'), seed=1)
  before = {k: v.clone() for k, v in model.state_dict().items()}
  save_official_checkpoint(model, tmp_path / 'ckpt.pth', kind='full')
  ckpt = torch.load(tmp_path / 'ckpt.pth', map_location='cpu')
  assert set(ckpt) == {'cur_epoch', 'cur_iter', 'optimizer', 'model'}
  assert (ckpt['cur_epoch'], ckpt['cur_iter']) == (860, 159960)
  n_params = len(list(model.parameters()))
  assert sorted(ckpt['optimizer']['state']) == list(range(n_params))
  assert ckpt['optimizer']['param_groups'][0]['lr'] == 0.05
  for key, value in before.items():  # saving must not step the model itself
    assert torch.equal(model.state_dict()[key], value), key
  build_reference('r18').load_state_dict(ckpt['model'], strict=True)


def test_bare_and_module_checkpoints(tmp_path):
  model = build_reference('r18')
  save_official_checkpoint(model, tmp_path / 'bare.pth', kind='bare')
  save_official_checkpoint(model, tmp_path / 'module.pth', kind='module')
  bare = torch.load(tmp_path / 'bare.pth', map_location='cpu')
  module = torch.load(tmp_path / 'module.pth', map_location='cpu')
  assert list(bare) == list(model.state_dict())
  assert list(module) == [f'module.{k}' for k in bare]
  with pytest.raises(ValueError):
    save_official_checkpoint(model, tmp_path / 'x.pth', kind='ema')


def test_read_key_list_parses_shapes_and_checks_header(tmp_path):
  path = tmp_path / 'keys.txt'
  path.write_text('2 params 7\na.weight (3, 2, 1, 1)\na.num_batches_tracked ()\n')
  assert read_key_list(path) == ([('a.weight', (3, 2, 1, 1)), ('a.num_batches_tracked', ())], 7)
  path.write_text('3 params 7\na.weight (3,)\n')
  with pytest.raises(ValueError):
    read_key_list(path)
