"""Converters: strict errors that write nothing, exact round trips, ImageNet backbone import."""

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from bisenet_jax import checkpoint, load_pretrained, models
from bisenet_jax.bench import torch_models
from bisenet_jax.bench.torch_models import bisenetv1 as torch_model
from bisenet_jax.errors import UserError
from bisenet_jax.interop import imagenet, ssseg
from bisenet_jax.specs import ModelSpec
from conftest import run_script
import torch_support


@pytest.fixture(scope='module')
def r18(torch_threads):
  return torch_support.randomize_(torch_model.build_reference('r18'), seed=5)


def convert(src, out, *extra):
  return run_script('convert/ssseg_to_flax.py', '--input', str(src), '--output', str(out), *extra)


@pytest.mark.parametrize('kind', [pytest.param('full', marks=pytest.mark.slow),
                                  pytest.param('bare', marks=pytest.mark.slow), 'module'])
def test_every_official_file_kind_converts_to_the_same_variables(r18, tmp_path, kind):
  torch_support.save_official_checkpoint(r18, tmp_path / 'x.pth', kind=kind)
  assert convert(tmp_path / 'x.pth', tmp_path / 'out').returncode == 0
  model, variables = load_pretrained(tmp_path / 'out')
  assert (model.depth, model.num_classes) == (18, 19)
  kernel = variables['params']['decoder']['4']['kernel']
  np.testing.assert_array_equal(
      kernel, r18.decoder[4].weight.detach().numpy().transpose(2, 3, 1, 0))


def _broken_state_dicts(state):
  missing = OrderedDict(state)
  del missing['backbone_net.ffm.conv1.1.running_var']
  extra = OrderedDict(state, **{'backbone_net.extra.weight': torch.zeros(3)})
  wrong = OrderedDict(state)
  wrong['decoder.0.weight'] = torch.zeros(256, 256, 1, 1)
  return {
      'missing': (missing, [], 'missing: backbone_net.ffm.conv1.1.running_var'),
      'extra': (extra, [], 'unexpected: backbone_net.extra.weight'),
      'shape': (wrong, [], 'wrong shape: decoder.0.weight: file (256, 256, 1, 1), '
                'model (256, 256, 3, 3)'),
      'arch': (state, ['--arch', 'bisenetv1_r50'], 'as bisenetv1_r50'),
  }


@pytest.mark.parametrize('case', ['missing', 'extra', 'shape', 'arch'])
def test_a_bad_checkpoint_lists_the_keys_and_writes_nothing(r18, tmp_path, case):
  state, extra_args, expected = _broken_state_dicts(r18.state_dict())[case]
  torch.save({'model': state}, tmp_path / 'bad.pth')
  result = convert(tmp_path / 'bad.pth', tmp_path / 'out', *extra_args)
  assert result.returncode == 2
  assert expected in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'out').exists()


def test_wrong_arch_lists_every_mismatched_key(r18):
  state = {k: v.numpy() for k, v in r18.state_dict().items()}
  with pytest.raises(UserError) as e:
    ssseg.convert_state_dict(state, 'bisenetv1_r50')
  # R18 and R50 share key names apart from the bottlenecks' conv3/bn3, but not one conv shape.
  assert 'mis-shaped' in str(e.value).splitlines()[0]
  assert 'wrong shape: decoder.0.weight' in str(e.value)


def test_not_a_checkpoint_and_missing_file_are_one_line_errors(tmp_path):
  (tmp_path / 'junk.pth').write_bytes(b'not a zip')
  for path in (tmp_path / 'junk.pth', tmp_path / 'absent.pth'):
    result = convert(path, tmp_path / 'out')
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('name', [
    'bisenetv1_r18', pytest.param('bisenetv2', marks=pytest.mark.slow),
    pytest.param('fastscnn', marks=pytest.mark.slow)])
def test_export_round_trip_is_exact_and_loads_strictly(name, tmp_path, torch_threads):
  """Official file -> Flax (the network recognised from its tensors) -> .pth that the PyTorch
  model loads with strict=True, equal tensor for tensor -> Flax again, identical."""
  reference = torch_support.randomize_(torch_models.reference_builder(name)(), seed=5)
  torch_support.save_official_checkpoint(reference, tmp_path / 'a.pth', kind='full')
  result = convert(tmp_path / 'a.pth', tmp_path / 'flax')
  assert result.returncode == 0, result.stderr
  assert f'({name}, 19 classes' in result.stdout
  result = run_script('convert/flax_to_ssseg.py', '--input', str(tmp_path / 'flax'),
                      '--output', str(tmp_path / 'b.pth'), '--num-batches-tracked', '7')
  assert result.returncode == 0, result.stderr

  exported = torch.load(tmp_path / 'b.pth', weights_only=True)['model']
  original = reference.state_dict()
  assert set(exported) == set(original)
  for key, value in original.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    if key.endswith('num_batches_tracked'):
      assert int(exported[key]) == 7
    else:
      assert torch.equal(exported[key], value), key
  fresh = torch_models.reference_builder(name)()
  fresh.load_state_dict(exported, strict=True)

  # And back again: Flax -> .pth -> Flax is the identity.
  assert convert(tmp_path / 'b.pth', tmp_path / 'flax2').returncode == 0
  _, v1 = load_pretrained(tmp_path / 'flax')
  _, v2 = load_pretrained(tmp_path / 'flax2')
  assert jax.tree_util.tree_all(
      jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), v1, v2))


def test_a_file_of_no_known_network_says_what_was_looked_for(r18, tmp_path):
  state = {k: v.numpy() for k, v in r18.state_dict().items()}
  renamed = {k.replace('decoder.4.', 'decoder.9.'): v for k, v in state.items()}
  with pytest.raises(UserError) as e:
    ssseg.convert_state_dict(renamed)
  message = str(e.value)
  assert len(message.splitlines()) == 1
  for name, key in (('bisenetv1_r18', 'decoder.4.weight'), ('bisenetv2', 'decoder.4.weight'),
                    ('fastscnn', 'decoder.3.weight')):
    assert f'{key} ({name})' in message
  # A BiSeNetV1 file forced to another network: the keys of that network it lacks and has extra.
  with pytest.raises(UserError) as e:
    ssseg.convert_state_dict(state, 'bisenetv2')
  first, *listed = str(e.value).splitlines()
  assert 'as bisenetv2 does not fit' in first and 'sssegmentation FCN + BiSeNetV2' in first
  assert '  missing: backbone_net.bga.conv.0.weight' in listed
  assert '  unexpected: backbone_net.ffm.conv1.0.weight' in listed
  with pytest.raises(UserError, match="unknown network 'r18': choose one of bisenetv1_r18"):
    ssseg.convert_state_dict(state, 'r18')


@pytest.mark.slow  # A whole official .pth read and converted (the CLIs do it quickly too).
def test_load_pretrained_reads_an_official_pth_directly(r18, tmp_path):
  torch_support.save_official_checkpoint(r18, tmp_path / 'a.pth', kind='full')
  model, variables = load_pretrained(tmp_path / 'a.pth')
  assert model.depth == 18
  np.testing.assert_array_equal(
      variables['batch_stats']['decoder']['1']['var'], r18.decoder[1].running_var.numpy())


def test_a_pth_with_its_ema_is_unpickled_once(r18, tmp_path, monkeypatch):
  state = r18.state_dict()
  torch.save({'model': state, 'model_ema': state}, tmp_path / 'with_ema.pth')
  loads, load = [], torch.load
  monkeypatch.setattr(torch, 'load', lambda *args, **kwargs: loads.append(args) or load(
      *args, **kwargs))
  result = convert(tmp_path / 'with_ema.pth', tmp_path / 'out')
  assert result.returncode == 0, result.stderr
  assert 'with its model_ema' in result.stdout and len(loads) == 1


def test_output_folder_that_exists_is_refused(r18, tmp_path):
  torch_support.save_official_checkpoint(r18, tmp_path / 'a.pth', kind='bare')
  (tmp_path / 'out').mkdir()
  result = convert(tmp_path / 'a.pth', tmp_path / 'out')
  assert result.returncode == 2 and 'already exists' in result.stderr


def _spec(name, stem=None):
  return ModelSpec(name, 19, stem)


def _init_shapes(name, stem=None):
  """The variables' shapes: all that matching a file needs (nothing is computed)."""
  return models.abstract_variables(models.build(_spec(name, stem)))


@pytest.mark.parametrize('depth,name,count', [
    (18, 'bisenetv1_r18', 110), pytest.param(50, 'bisenetv1_r50', 275, marks=pytest.mark.slow)])
def test_imagenet_v1c_file_fills_the_whole_backbone(tmp_path, depth, name, count):
  state = torch_support.imagenet_state_dict(depth, 'deep', with_fc=True)
  torch.save({'state_dict': state}, tmp_path / 'v1c.pth')
  variables, report = imagenet.load_backbone(tmp_path / 'v1c.pth', _init_shapes(name),
                                             _spec(name))
  assert report.matched == count
  assert report.ignored == ('fc.bias', 'fc.weight')
  resnet = imagenet.backbone_subtree(variables, imagenet.backbone_path(_spec(name)))
  np.testing.assert_array_equal(
      resnet['params']['layer1.0']['bn1']['scale'],
      state['layer1.0.bn1.weight'].numpy())


def test_torchvision_file_needs_the_classic_stem(tmp_path):
  torch.save(torch_support.imagenet_state_dict(18, 'classic'), tmp_path / 'tv.pth')
  with pytest.raises(UserError, match="model.stem='classic'"):
    imagenet.load_backbone(tmp_path / 'tv.pth', _init_shapes('bisenetv1_r18'),
                           _spec('bisenetv1_r18'))
  _, report = imagenet.load_backbone(tmp_path / 'tv.pth', _init_shapes('bisenetv1_r18', 'classic'),
                                     _spec('bisenetv1_r18', 'classic'))
  assert report.matched == 110 - 15 + 5  # One 7x7 conv + BN instead of three convs + BNs.


def test_imagenet_file_that_matches_nothing_or_mismatches_is_refused(tmp_path, r18):
  torch.save(r18.state_dict(), tmp_path / 'segmentor.pth')
  r18_spec = _spec('bisenetv1_r18')
  with pytest.raises(UserError, match='matches no key'):
    imagenet.load_backbone(tmp_path / 'segmentor.pth', _init_shapes('bisenetv1_r18'), r18_spec)
  torch.save(torch_support.imagenet_state_dict(50, 'deep'), tmp_path / 'r50.pth')
  with pytest.raises(UserError, match='wrong shape'):
    imagenet.load_backbone(tmp_path / 'r50.pth', _init_shapes('bisenetv1_r18'), r18_spec)
  result = run_script('convert/imagenet_backbone.py', '--input', str(tmp_path / 'r50.pth'),
                      '--arch', 'bisenetv1_r18')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  # Networks trained from scratch have no ResNet to fill.
  with pytest.raises(UserError, match='bisenetv2 has no ImageNet backbone'):
    imagenet.load_backbone(tmp_path / 'r50.pth', _init_shapes('bisenetv2'), _spec('bisenetv2'))


def test_checkpoint_config_round_trip(tmp_path):
  variables = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), _init_shapes('fastscnn'))
  config = ModelSpec('fastscnn', 19)
  checkpoint.save_model(tmp_path / 'm', variables, config)
  restored_config, restored = checkpoint.restore_model(tmp_path / 'm')
  assert restored_config == config
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(variables)
