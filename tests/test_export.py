"""Tests of ``python -m bisenet_jax.export`` and of running its files (ONNX Runtime, jax.export).

Models are the PyTorch reference with random weights (varied labels on street scenes) or a Flax
initialisation (R50), saved as model checkpoints with Cityscapes' classes. Each file is exported
once per module and checked against the JAX model it came from: a default file at each image's
own size, a file of fixed ``--input-size`` as JAX with that input size.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import onnx
import pytest

from bisenet_jax import checkpoint, models, predict
from bisenet_jax.data import sources
from bisenet_jax.data.normalization import normalize
from bisenet_jax.data.synthetic import draw_street_scene
from bisenet_jax.eval import inference
from bisenet_jax.export import INTERFACE_KEY, DATASET_KEY, Interface, onnx_runtime
from bisenet_jax.export.__main__ import main as export_main
from bisenet_jax.specs import DatasetSpec, InferenceSpec, ModelSpec

from conftest import ROOT
from labelled_files import read_rgb
import torch_support

# One pytest-xdist worker builds this module's checkpoints and files once (--dist loadgroup).
pytestmark = pytest.mark.xdist_group('export')

ODD = (481, 641)  # No stride divides it.
SMALL = (61, 97)


def save_random_model(directory, name, seed=0):
  spec = ModelSpec(name, 19)
  variables = models.init_variables(models.build(spec), jax.random.key(seed))
  checkpoint.save_model(directory, variables, spec, sources.CITYSCAPES)
  return directory


def save_reference_model(directory, name, seed=3):
  """The PyTorch reference's random weights (whose logits vary across a scene) as a checkpoint."""
  from bisenet_jax.bench import torch_models
  pth = directory.with_suffix('.pth')
  model = torch_support.randomize_(torch_models.reference_builder(name)(), seed=seed)
  torch_support.save_official_checkpoint(model, pth, kind='full')
  _, variables = checkpoint.load_pretrained(pth)
  checkpoint.save_model(directory, variables, ModelSpec(name, 19), sources.CITYSCAPES)
  return directory


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return tmp_path_factory.mktemp('export')


@pytest.fixture(scope='module')
def r18(folder):
  return save_reference_model(folder / 'r18', 'bisenetv1_r18')


def export(checkpoint_path, output, *flags):
  export_main(['--checkpoint', str(checkpoint_path), '--output', str(output), *flags])
  return output


def size_flags(size):
  return ['--input-size', f'{size[0]}x{size[1]}']


@pytest.fixture(scope='module')
def r18_onnx(r18, folder):
  return export(r18, folder / 'r18.onnx', '--format', 'onnx', *size_flags(ODD))


@pytest.fixture(scope='module')
def r18_any_size_onnx(r18, folder):
  """The default file: float32 NCHW logits, the network at each image's own size."""
  return export(r18, folder / 'r18_any_size.onnx', '--format', 'onnx')


def jax_logits(checkpoint_path, images_nhwc):
  model, variables = checkpoint.load_pretrained(checkpoint_path)
  with jax.default_matmul_precision('highest'):
    return np.asarray(jax.jit(lambda x: model.apply(variables, x, train=False))(images_nhwc))


def random_images(batch, size, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, *size, 3), np.uint8)


def street_scenes(batch, size, seed=0):
  rng = np.random.default_rng(seed)
  return np.stack([draw_street_scene(rng, *size)[0] for _ in range(batch)])


def assert_close_to_scale(got, expected, tolerance=1e-4):
  scale = np.abs(expected).max()
  assert scale > 0
  assert np.abs(got - expected).max() <= tolerance * scale


def test_a_default_file_runs_the_network_at_the_images_own_size(r18, r18_any_size_onnx):
  model = onnx.load(str(r18_any_size_onnx))
  metadata = {p.key: p.value for p in model.metadata_props}
  assert Interface.from_json(metadata[INTERFACE_KEY]) == Interface(
      None, None, 19, any_input_size=True, resize_to=(1024, 2048))  # Cityscapes' test resize.
  operators = [node.op_type for node in model.graph.node]
  assert operators.count('Conv') == 37 and operators.count('Resize') == 2
  assert 'BatchNormalization' not in operators and 'Transpose' not in operators
  session = onnx_runtime.session(r18_any_size_onnx)
  for size in ((97, 203), (64, 96)):
    images = normalize(random_images(1, size, seed=size[0]))
    got = session.run(None, {'images': images.transpose(0, 3, 1, 2)})[0]
    assert got.shape == (1, 19, -(-size[0] // 8), -(-size[1] // 8))
    assert_close_to_scale(got, jax_logits(r18, images).transpose(0, 3, 1, 2))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['bisenetv1_r18', 'bisenetv1_r50', 'bisenetv2', 'fastscnn'])
def test_every_network_runs_at_the_images_own_size_at_real_sizes(name, folder):
  """The default file of each network equals its JAX model at sizes no stride divides, and at
  Cityscapes' own: every resize and adaptive pool follows the run-time shapes."""
  path = save_reference_model(folder / f'{name}_any', name)
  session = onnx_runtime.session(export(path, folder / f'{name}_any.onnx', '--format', 'onnx'))
  for size in ((97, 203), (481, 641), (720, 1280), (1024, 2048)):
    images = normalize(random_images(1, size, seed=size[1]))
    got = session.run(None, {'images': images.transpose(0, 3, 1, 2)})[0]
    expected = jax_logits(path, images).transpose(0, 3, 1, 2)
    print(f'{name} {size}: max |ONNX - JAX| / max |JAX| = '
          f'{np.abs(got - expected).max() / np.abs(expected).max():.1e}')
    assert_close_to_scale(got, expected)


@pytest.mark.slow
def test_onnx_file_is_valid_and_carries_its_interface(r18_onnx, capsys):
  model = onnx.load(str(r18_onnx))
  onnx.checker.check_model(model)
  metadata = {p.key: p.value for p in model.metadata_props}
  interface = Interface.from_json(metadata[INTERFACE_KEY])
  assert interface == Interface(*ODD, 19, any_input_size=True, resize_to=(1024, 2048))
  assert DatasetSpec.from_json(json.loads(metadata[DATASET_KEY])).kind == 'cityscapes'
  session = onnx_runtime.session(r18_onnx)
  (given,), (returned,) = session.get_inputs(), session.get_outputs()
  assert (given.name, given.type, given.shape) == ('images', 'tensor(float)', ['N', 3, 'H', 'W'])
  assert (returned.name, returned.shape) == ('logits', ['N', 19, 'ceil(H/8)', 'ceil(W/8)'])
  # BatchNorms folded into the convolutions, no transposes left between them.
  operators = [node.op_type for node in model.graph.node]
  assert operators.count('Conv') == 37 and 'BatchNormalization' not in operators
  assert operators.count('Transpose') < 10 and 'Sqrt' not in operators


@pytest.mark.slow
@pytest.mark.parametrize('batch', [1, 2])
def test_onnx_logits_match_jax_r18_odd_size(r18, r18_onnx, batch):
  images = normalize(random_images(batch, ODD))
  expected = jax_logits(r18, images).transpose(0, 3, 1, 2)
  got = onnx_runtime.session(r18_onnx).run(None, {'images': images.transpose(0, 3, 1, 2)})[0]
  assert got.shape == (batch, 19, 61, 81)
  assert_close_to_scale(got, expected)


@pytest.mark.slow  # R50's export and two runs: about 50 s on 2 CPU cores.
def test_onnx_logits_match_jax_r50_batch_1_and_2(folder):
  r50 = save_random_model(folder / 'r50', 'bisenetv1_r50')
  size = (97, 129)
  path = export(r50, folder / 'r50.onnx', '--format', 'onnx', '--layout', 'nhwc',
                *size_flags(size))
  session = onnx_runtime.session(path)
  for batch in (1, 2):
    images = normalize(random_images(batch, size, seed=batch))
    assert_close_to_scale(session.run(None, {'images': images})[0], jax_logits(r50, images))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['bisenetv2', 'fastscnn'])
def test_every_network_exports_to_onnx_and_stablehlo_equal_to_jax(name, folder):
  """Depthwise convolutions leave as ONNX grouped ``Conv`` nodes (not the CPU's window taps);
  BGA's padded average pool and the pyramid's adaptive pools as standard operators. Logits equal
  JAX's at an odd size, through ONNX Runtime and through the reloaded StableHLO."""
  path = save_reference_model(folder / name, name)
  size = (97, 129)
  onnx_path = export(path, folder / f'{name}.onnx', '--format', 'onnx', *size_flags(size))
  grouped = [node for node in onnx.load(str(onnx_path)).graph.node if node.op_type == 'Conv'
             and any(a.name == 'group' and a.i > 1 for a in node.attribute)]
  model, variables = checkpoint.load_pretrained(path)
  depthwise = [k for k in jax.tree.leaves(variables['params']) if k.ndim == 4 and k.shape[2] == 1]
  assert len(grouped) == len(depthwise) > 0
  images = normalize(random_images(2, size, seed=11))
  expected = jax_logits(path, images)
  got = onnx_runtime.session(onnx_path).run(None, {'images': images.transpose(0, 3, 1, 2)})[0]
  assert got.shape == (2, 19, 13, 17)
  assert_close_to_scale(got.transpose(0, 2, 3, 1), expected)
  hlo_path = export(path, folder / f'{name}.stablehlo', '--format', 'stablehlo',
                    '--layout', 'nhwc', *size_flags(size))
  from bisenet_jax.export import stablehlo_file
  exported = stablehlo_file.load(hlo_path.read_bytes())
  assert 'platform_index' not in exported.mlir_module()
  assert_close_to_scale(np.asarray(exported.call(images)), expected)


@pytest.mark.slow
def test_preprocessing_in_the_graph_equals_normalising_first(r18, r18_onnx, folder):
  path = export(r18, folder / 'r18_uint8.onnx', '--format', 'onnx', '--with-preprocessing',
                *size_flags(ODD))
  images = random_images(2, ODD, seed=5)
  raw = onnx_runtime.session(path).run(None, {'images': images.transpose(0, 3, 1, 2).copy()})[0]
  normalised = normalize(images).transpose(0, 3, 1, 2).copy()
  expected = onnx_runtime.session(r18_onnx).run(None, {'images': normalised})[0]
  np.testing.assert_array_equal(raw, expected)


@pytest.fixture(scope='module')
def r18_labels_onnx(r18, folder):
  return export(r18, folder / 'r18_labels.onnx', '--format', 'onnx', '--outputs', 'labels',
                '--with-preprocessing', '--layout', 'nhwc')


@pytest.fixture(scope='module')
def r18_fixed_labels_onnx(r18, folder):
  return export(r18, folder / 'r18_fixed_labels.onnx', '--format', 'onnx', '--outputs',
                'labels', '--with-preprocessing', '--layout', 'nhwc', *size_flags(SMALL))


def jax_labels(checkpoint_path, images, input_size=None):
  """What the file should give: the JAX model run at ``input_size`` (default: the images'),
  labels at the images' size."""
  model, variables = checkpoint.load_pretrained(checkpoint_path)
  spec = InferenceSpec(input_size=input_size)
  with jax.default_matmul_precision('highest'):
    return np.asarray(jax.jit(lambda x: inference.predict_labels(
        lambda y: model.apply(variables, y, train=False), x, x.shape[1:3], spec))(
            normalize(images)))


@pytest.mark.slow  # Three sizes; the quick tier compares masks through predict below.
def test_a_labels_file_equals_predict_labels_at_each_images_size(r18, r18_labels_onnx):
  session = onnx_runtime.session(r18_labels_onnx)
  for batch, size in ((1, (45, 70)), (1, (90, 200)), (2, SMALL)):
    images = street_scenes(batch, size, seed=sum(size))
    expected = jax_labels(r18, images)
    assert len(np.unique(expected)) >= 2
    got = session.run(None, {'images': images})[0]
    assert got.dtype == np.uint8 and got.shape == (batch, *size)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_a_file_of_fixed_size_takes_any_size_as_jax_with_its_input_size(r18,
                                                                         r18_fixed_labels_onnx):
  session = onnx_runtime.session(r18_fixed_labels_onnx)
  for size in ((45, 70), (90, 200), SMALL):
    images = street_scenes(1, size, seed=sum(size))
    expected = jax_labels(r18, images, SMALL)
    assert len(np.unique(expected)) >= 2
    got = session.run(None, {'images': images})[0]
    assert got.shape == (1, *size)
    np.testing.assert_array_equal(got, expected)


def write_images(root, count=2, sizes=(SMALL,)):
  import cv2
  root.mkdir()
  for index in range(count):
    image = street_scenes(1, sizes[index % len(sizes)], seed=20 + index)[0]
    assert cv2.imwrite(str(root / f'{index}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  return root


# A test Resize that keeps SMALL images and 50x97 ones as they are (each touches an edge of it):
# a labels file's masks then equal the logits' (tests/test_protocol.py resizes).
KEEP_SIZE = ['--resize-to', f'{SMALL[0]}x{SMALL[1]}']


def test_predict_with_the_onnx_file_without_jax_writes_the_checkpoints_masks(
    r18, r18_labels_onnx, tmp_path):
  images = write_images(tmp_path / 'images')
  predict.main(['--checkpoint', str(r18), str(images), '--output', str(tmp_path / 'jax'),
                *KEEP_SIZE])
  # JAX (and Flax) cannot be imported in this process: the ONNX path must not need them.
  script = textwrap.dedent(f'''
      import sys
      for name in ('jax', 'jaxlib', 'flax', 'orbax', 'orbax.checkpoint'):
        sys.modules[name] = None
      from bisenet_jax import predict
      predict.main(['--checkpoint', {str(r18_labels_onnx)!r}, {str(images)!r},
                    '--output', {str(tmp_path / 'onnx')!r}, *{KEEP_SIZE!r}])
      assert 'jax' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]
  ''')
  result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stderr
  assert 'wrote 2 mask(s)' in result.stdout
  for name in ('0_mask.png', '1_mask.png', 'legend.png'):
    np.testing.assert_array_equal(read_rgb(tmp_path / 'onnx' / name),
                                  read_rgb(tmp_path / 'jax' / name), err_msg=name)


def test_a_logits_file_and_a_labels_file_give_the_same_masks_in_predict(
    r18_any_size_onnx, r18_labels_onnx, tmp_path):
  """A logits file's logits are upsampled and argmaxed on the host as the protocol does."""
  images = write_images(tmp_path / 'images', count=2, sizes=(SMALL, (50, 97)))
  for path, output in ((r18_any_size_onnx, 'logits'), (r18_labels_onnx, 'labels')):
    predict.main(['--checkpoint', str(path), str(images), '--output', str(tmp_path / output),
                  *KEEP_SIZE])
  for name in ('0_mask.png', '1_mask.png'):
    mask = read_rgb(tmp_path / 'labels' / name)
    assert len(np.unique(mask.reshape(-1, 3), axis=0)) >= 2
    np.testing.assert_array_equal(read_rgb(tmp_path / 'logits' / name), mask, err_msg=name)


def test_host_upsampling_is_the_protocols_resize():
  from bisenet_jax.models.layers import resize_bilinear
  logits = np.random.default_rng(0).normal(size=(2, 7, 13, 5)).astype(np.float32)
  for size in ((50, 97), (7, 13), (4, 30)):
    np.testing.assert_allclose(onnx_runtime.upsample_bilinear(logits, size),
                               np.asarray(resize_bilinear(logits, size)), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_stablehlo_round_trip_in_a_process_with_only_jax_and_numpy(r18, folder):
  path = export(r18, folder / 'r18.stablehlo', '--format', 'stablehlo', *size_flags(SMALL))
  images = normalize(random_images(2, SMALL, seed=3))
  np.save(folder / 'images.npy', images.transpose(0, 3, 1, 2))
  script = textwrap.dedent(f'''
      import sys
      import jax, numpy as np
      exported = jax.export.deserialize(bytearray(open({str(path)!r}, 'rb').read()))
      images = np.load({str(folder / 'images.npy')!r})
      np.save({str(folder / 'stablehlo_out.npy')!r},
              np.concatenate([np.asarray(exported.call(images[:1])),
                              np.asarray(exported.call(images))]))
      assert not [m for m in sys.modules if m.startswith(('bisenet_jax', 'flax'))]
  ''')
  result = subprocess.run([sys.executable, '-c', script], cwd='/', capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  got = np.load(folder / 'stablehlo_out.npy')
  expected = jax_logits(r18, images).transpose(0, 3, 1, 2)
  assert_close_to_scale(got, np.concatenate([expected[:1], expected]), tolerance=1e-5)
  # The records a StableHLO file cannot carry, beside it; replaced only with --force.
  records = json.loads((folder / 'r18.stablehlo.json').read_text())
  assert Interface.from_json(json.dumps(records[INTERFACE_KEY])) == Interface(
      *SMALL, 19, resize_to=(1024, 2048))
  assert DatasetSpec.from_json(records[DATASET_KEY]) == sources.CITYSCAPES
  path.unlink()
  with pytest.raises(SystemExit):
    export(r18, path, '--format', 'stablehlo', *size_flags(SMALL))
  assert not path.exists()


@pytest.mark.slow
def test_float16_stablehlo_is_within_the_documented_bound(r18, folder, capsys):
  path = export(r18, folder / 'r18_fp16.stablehlo', '--format', 'stablehlo', '--dtype',
                'float16', *size_flags(SMALL))
  assert 'float16' in capsys.readouterr().out
  images = normalize(random_images(2, SMALL, seed=4))
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  got = np.asarray(exported.call(images.transpose(0, 3, 1, 2)))
  expected = jax_logits(r18, images).transpose(0, 3, 1, 2)
  # docs/deployment.md: float16 logits within 1e-2 of max |logits| (measured: about 1e-3).
  assert_close_to_scale(got, expected, tolerance=1e-2)


@pytest.mark.parametrize('flags, message', [
    (['--format', 'tflite'], "--format 'tflite' is not one of onnx, stablehlo"),
    (['--format', 'onnx', '--input-size', '0x97'], "--input-size '0x97' is not a size"),
    (['--format', 'onnx', '--height', '512'], '--height is gone: use --input-size HEIGHTxWIDTH'),
    (['--format', 'onnx', '--layout', 'nhcw'], "--layout 'nhcw' is not one of nchw, nhwc"),
    (['--format', 'onnx', '--dtype', 'int8'], '--dtype int8 needs calibration images'),
    (['--format', 'stablehlo', '--dtype', 'int8', '--calibration', '.'],
     '--dtype int8 is for --format onnx'),
    (['--format', 'onnx', '--calibration', 'nowhere'], '--calibration nowhere does not exist'),
    (['--format', 'onnx', '--calibration', 'tests/data'], '--calibration tests/data: no *.jpg'),
])
def test_bad_arguments_are_one_line_errors(r18, tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exit_info:
    export(r18, tmp_path / 'out.onnx', *flags)
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert message in error and error.count('\n') == 1
  assert not list(tmp_path.iterdir())


def test_not_a_model_is_a_one_line_error(tmp_path, capsys):
  (tmp_path / 'notes.txt').write_text('not a model')
  with pytest.raises(SystemExit):
    export(tmp_path / 'notes.txt', tmp_path / 'out.stablehlo', '--format', 'stablehlo')
  error = capsys.readouterr().err
  assert 'is not a model checkpoint' in error and error.count('\n') == 1
  assert [p.name for p in tmp_path.iterdir()] == ['notes.txt']


def test_existing_output_is_refused_without_force(r18, tmp_path, capsys):
  (tmp_path / 'out.onnx').write_bytes(b'keep me')
  with pytest.raises(SystemExit):
    export(r18, tmp_path / 'out.onnx', '--format', 'onnx')
  error = capsys.readouterr().err
  assert 'already exists: pass --force' in error and error.count('\n') == 1
  assert (tmp_path / 'out.onnx').read_bytes() == b'keep me'


def test_missing_extra_names_it(r18, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # import jax2onnx now raises ImportError.
  with pytest.raises(SystemExit):
    export(r18, tmp_path / 'out.onnx', '--format', 'onnx')
  error = capsys.readouterr().err
  assert "pip install -e '.[export]'" in error and error.count('\n') == 1


@pytest.mark.slow
def test_predict_refuses_test_time_views_and_another_size_for_a_fixed_file(
    r18_onnx, r18_labels_onnx, tmp_path, capsys):
  images = write_images(tmp_path / 'images', count=1)
  for path in (r18_onnx, r18_labels_onnx):
    with pytest.raises(SystemExit):
      predict.main(['--checkpoint', str(path), str(images / '0.png'), '--scales', '0.5,1',
                    '--output', str(tmp_path / 'o')])
    assert 'runs each whole image once, at its own input size' in capsys.readouterr().err
  # Files of earlier versions took one size only: they refuse another one.
  fixed = onnx.load(str(r18_onnx))
  entry = next(p for p in fixed.metadata_props if p.key == INTERFACE_KEY)
  entry.value = json.dumps({**json.loads(entry.value), 'any_input_size': False})
  onnx.save(fixed, tmp_path / 'fixed.onnx')
  import cv2
  cv2.imwrite(str(tmp_path / 'other.png'), np.zeros((32, 48, 3), np.uint8))
  with pytest.raises(SystemExit):
    predict.main(['--checkpoint', str(tmp_path / 'fixed.onnx'), str(tmp_path / 'other.png'),
                  '--output', str(tmp_path / 'o'), '--resize-to', '32x48'])
  assert 'takes 481x641 images, this one is 32x48' in capsys.readouterr().err
  assert not list((tmp_path / 'o').glob('*_mask.png'))


def agreement(output: str) -> float:
  """The share the export's check line reports."""
  line = next(line for line in output.splitlines() if line.startswith('check on'))
  return float(line.split(': ')[1].split('%')[0]) / 100


@pytest.mark.slow
def test_float16_and_int8_files_report_their_agreement_and_run_any_size(r18, r18_labels_onnx,
                                                                         tmp_path, capsys):
  calibration = write_images(tmp_path / 'calibration', count=4)
  export(r18, tmp_path / 'fp16.onnx', '--format', 'onnx', '--dtype', 'float16', '--outputs',
         'labels', '--with-preprocessing', '--layout', 'nhwc', '--calibration', str(calibration))
  out = capsys.readouterr().out
  assert 'float16' in out and 'check on 4 calibration image(s)' in out
  assert agreement(out) > 0.99
  export(r18, tmp_path / 'int8.onnx', '--format', 'onnx', '--dtype', 'int8', '--outputs',
         'labels', '--with-preprocessing', '--layout', 'nhwc', '--calibration', str(calibration),
         '--min-agreement', '0.5')
  out = capsys.readouterr().out
  assert 'int8' in out and agreement(out) > 0.9  # Random weights: near-tied logits.
  int8 = onnx.load(str(tmp_path / 'int8.onnx'))
  operators = [node.op_type for node in int8.graph.node]
  assert operators.count('QuantizeLinear') >= 37 and operators.count('Conv') == 37
  assert (tmp_path / 'int8.onnx').stat().st_size < (r18_labels_onnx.stat().st_size / 3)
  images = street_scenes(1, (45, 70), seed=9)
  for name in ('fp16.onnx', 'int8.onnx'):
    segmenter = onnx_runtime.OnnxModel(tmp_path / name)
    labels = segmenter.labels(images)
    assert labels.shape == (1, 45, 70) and labels.dtype == np.uint8
    assert np.mean(labels == jax_labels(r18, images)) > 0.85


@pytest.mark.slow
def test_int8_under_the_agreement_threshold_is_refused_and_nothing_written(r18, tmp_path, capsys):
  calibration = write_images(tmp_path / 'calibration', count=2)
  with pytest.raises(SystemExit) as exit_info:
    export(r18, tmp_path / 'int8.onnx', '--format', 'onnx', '--dtype', 'int8', '--outputs',
           'labels', *size_flags(SMALL), '--calibration', str(calibration),
           '--min-agreement', '1')
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert error.count('\n') == 1 and 'under --min-agreement 100.00%: nothing written' in error
  assert not (tmp_path / 'int8.onnx').exists()
  assert [p.name for p in tmp_path.iterdir()] == ['calibration']


def test_calibration_takes_a_dataset_roots_training_images(tmp_path):
  from bisenet_jax.export import calibration
  for split in ('train', 'val'):
    (tmp_path / 'leftImg8bit' / split / 'city').mkdir(parents=True)
    (tmp_path / 'gtFine' / split / 'city').mkdir(parents=True)
    for index in range(5):
      for top in ('leftImg8bit', 'gtFine'):
        (tmp_path / top / split / 'city' / f'{index}.png').write_bytes(b'')
  picked = calibration.calibration_images(tmp_path, 3)
  assert [p.relative_to(tmp_path).as_posix() for p in picked] == [
      'leftImg8bit/train/city/0.png', 'leftImg8bit/train/city/2.png',
      'leftImg8bit/train/city/4.png']
  assert len(calibration.calibration_images(tmp_path / 'gtFine' / 'val', 100)) == 5


@pytest.mark.slow
def test_a_video_through_the_onnx_file_gives_the_jax_masks(
    r18, r18_labels_onnx, tmp_path, capsys):
  import cv2
  writer = cv2.VideoWriter(str(tmp_path / 'clip.mp4'), cv2.VideoWriter_fourcc(*'mp4v'), 5.0,
                           (90, 50))
  for image in street_scenes(4, (50, 90), seed=11):
    writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  writer.release()
  for path, output in ((r18_labels_onnx, 'onnx'), (r18, 'jax')):
    predict.main(['--checkpoint', str(path), str(tmp_path / 'clip.mp4'), '--output',
                  str(tmp_path / output), '--frame-masks', '--resize-to', '50x90'])
  assert capsys.readouterr().out.count('clip.mp4: 4 frame(s)') == 2
  for index in range(4):
    name = f'clip/{index:06d}_mask.png'
    np.testing.assert_array_equal(read_rgb(tmp_path / 'onnx' / name),
                                  read_rgb(tmp_path / 'jax' / name), err_msg=name)


def write_cityscapes_of_several_sizes(root, sizes):
  """Street scenes of ``sizes`` in Cityscapes' layout (val split, one city)."""
  import cv2
  for index, size in enumerate(sizes):
    image, label_ids = draw_street_scene(np.random.default_rng(index), *size)
    stem = root / '{}' / 'val' / 'city' / f'city_000000_{index:06d}_{{}}.png'
    for path, array in ((str(stem).format('leftImg8bit', 'leftImg8bit'),
                         cv2.cvtColor(image, cv2.COLOR_RGB2BGR)),
                        (str(stem).format('gtFine', 'gtFine_labelIds'), label_ids)):
      Path(path).parent.mkdir(parents=True, exist_ok=True)
      assert cv2.imwrite(path, array)
  return root


@pytest.mark.slow
def test_a_default_float32_file_scores_what_its_checkpoint_scores(r18, folder, tmp_path, capsys):
  """Images of three sizes, each scored at its own size by both (``--resize-to 120x192`` keeps
  every one of them as it is: each touches one of its edges; tests/test_protocol.py resizes)."""
  from bisenet_jax import evaluate
  root = write_cityscapes_of_several_sizes(tmp_path / 'cityscapes',
                                           ((97, 192), (120, 161), (120, 192)))
  path = export(r18, tmp_path / 'r18.onnx', '--format', 'onnx')
  scores = {}
  for name, model in (('checkpoint', r18), ('onnx', path)):
    evaluate.main(['--checkpoint', str(model), '--data-root', str(root),
                   '--output', str(tmp_path / f'{name}.json'), '--resize-to', '120x192'])
    scores[name] = json.loads((tmp_path / f'{name}.json').read_text())
  capsys.readouterr()
  assert scores['onnx']['images'] == scores['checkpoint']['images'] == 3
  assert 0 < scores['checkpoint']['miou'] < 1
  assert abs(scores['onnx']['miou'] - scores['checkpoint']['miou']) < 1e-4
