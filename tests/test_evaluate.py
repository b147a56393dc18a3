"""End-to-end tests of ``python -m bisenet_jax.evaluate``.

A fake Cityscapes val split (official layout, real labelIds including ignored ids, 64x128
street scenes in two cities) and an official-format ``.pth`` written by the PyTorch reference
with random weights go through the command line. Its scores must equal what PyTorch
predicts on the same files, scored by an independent NumPy confusion matrix; its saved
predictions must score the same in cityscapesscripts' official evaluation; 8 simulated
devices, and 2 processes, must count exactly what 1 device counts; bad input must fail in one
line.
"""

import copy
import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import id2label, trainId2label

from bisenet_jax import evaluate
from bisenet_jax.data import sources
from bisenet_jax.data.synthetic import draw_street_scene
from bisenet_jax.bench.torch_models import bisenetv1 as torch_model
from bisenet_jax.export import DATASET_KEY, INTERFACE_KEY, Interface
from conftest import ROOT, launch_processes, run_cli, wait_for
import torch_support

# One pytest-xdist worker builds this module's checkpoints and files once (--dist loadgroup).
pytestmark = pytest.mark.xdist_group('evaluate')

K = 19
HEIGHT, WIDTH = 64, 128
# Five images: with 8 devices x 1 image the only batch has 3 padding rows.
CITIES = {'aachen': 3, 'bochum': 2}
MODEL_SEED = 0
# PyTorch and XLA logits differ by ~1e-5 at most; where PyTorch's top two logits are closer than
# this, either class is a correct prediction.
TIE = 1e-4
# The reference's Normalize (docs/reference.md §5.3), RGB order.
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
# Independent of the project's tables: cityscapesscripts' labelId -> trainId (ignored: 255 or -1).
TRAIN_ID_OF_LABEL_ID = np.array([id2label[i].trainId if i in id2label else 255
                                 for i in range(256)], np.int64)
LABEL_ID_OF_TRAIN_ID = {t: trainId2label[t].id for t in range(K)}


def write_fake_cityscapes(root, split='val'):
  """Writes street scenes in the official layout; returns (image, GT) files in reading order."""
  files = []
  for city_index, (city, count) in enumerate(CITIES.items()):
    for frame in range(count):
      stem = f'{city}_000000_{frame + 19:06d}'
      image, label_ids = draw_street_scene(np.random.default_rng([city_index, frame]),
                                           HEIGHT, WIDTH)
      files.append((root / 'leftImg8bit' / split / city / f'{stem}_leftImg8bit.png',
                    root / 'gtFine' / split / city / f'{stem}_gtFine_labelIds.png'))
      for path, array in zip(files[-1], (cv2.cvtColor(image, cv2.COLOR_RGB2BGR), label_ids)):
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), array)
  return files


def torch_predictions(model, image_files):
  """The reference procedure in PyTorch: (trainId predictions, top-1 minus top-2 logit margin)."""
  bgr = np.stack([cv2.imread(str(f), cv2.IMREAD_COLOR) for f in image_files])
  images = (bgr[..., ::-1].astype(np.float32) - MEAN) / STD  # BGR -> RGB, as Normalize does.
  with torch.no_grad():
    logits = model.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))
    logits = F.interpolate(logits, size=(HEIGHT, WIDTH), mode='bilinear', align_corners=False)
  top2 = logits.topk(2, dim=1).values
  return logits.argmax(1).numpy(), (top2[:, 0] - top2[:, 1]).numpy()


def numpy_iou(preds, label_ids):
  """Dataset-level IoU per trainId from a NumPy confusion matrix, ignored labels dropped."""
  train_ids = TRAIN_ID_OF_LABEL_ID[label_ids]
  keep = train_ids < K
  confusion = np.bincount(train_ids[keep] * K + preds[keep], minlength=K * K).reshape(K, K)
  intersect = np.diag(confusion).astype(np.float64)
  with np.errstate(invalid='ignore'):
    return intersect / (confusion.sum(0) + confusion.sum(1) - intersect)


def read_predictions(directory, gt_files):
  """The saved labelId PNGs of each GT file, as trainIds."""
  preds = []
  for gt_file in gt_files:
    name = gt_file.name.replace('_gtFine_labelIds.png', '_leftImg8bit.png')
    label_ids = cv2.imread(str(directory / gt_file.parent.name / name), cv2.IMREAD_UNCHANGED)
    assert label_ids.dtype == np.uint8 and label_ids.shape == (HEIGHT, WIDTH)
    preds.append(TRAIN_ID_OF_LABEL_ID[label_ids])
  return np.stack(preds)


def iou_array(results):
  return np.array([np.nan if v is None else v for v in results['iou']])


def run_evaluate(checkpoint, root, output, predictions, *extra, env=None):
  result = run_cli('-m', 'bisenet_jax.evaluate', '--checkpoint', str(checkpoint),
                   '--data-root', str(root), '--resize-to', f'{HEIGHT}x{WIDTH}',
                   '--output', str(output), '--save-predictions', str(predictions), *extra,
                   env=env)
  assert result.returncode == 0, result.stderr
  return json.loads(output.read_text()), result.stdout


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """The fake split, the reference model and its official-format checkpoint."""
  tmp = tmp_path_factory.mktemp('evaluate')
  image_files, gt_files = zip(*write_fake_cityscapes(tmp / 'cityscapes'))
  model = torch_support.randomize_(torch_model.build_reference('r18'), MODEL_SEED)
  torch_support.save_official_checkpoint(model, tmp / 'official.pth', kind='full')
  return {'tmp': tmp, 'root': tmp / 'cityscapes', 'image_files': image_files,
          'gt_files': gt_files, 'model': model, 'checkpoint': tmp / 'official.pth'}


@pytest.fixture(scope='module')
def one_device(setup):
  """One run of the command on one device: (results.json content, stdout, predictions dir)."""
  tmp = setup['tmp']
  results, stdout = run_evaluate(setup['checkpoint'], setup['root'], tmp / 'results.json',
                                 tmp / 'predictions')
  return results, stdout, tmp / 'predictions'


def test_scores_equal_pytorch_reference_predictions(setup, one_device):
  results, stdout, predictions = one_device
  gt_files = setup['gt_files']
  label_ids = np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in gt_files])
  torch_preds, margin = torch_predictions(setup['model'], setup['image_files'])
  # The comparison means something: several classes predicted, ignored pixels in the labels,
  # some class overlap, and a class absent from both sides (a null IoU).
  assert len(np.unique(torch_preds)) >= 5
  assert (TRAIN_ID_OF_LABEL_ID[label_ids] == 255).mean() > 0.01
  want_iou = numpy_iou(torch_preds, label_ids)
  assert np.nanmax(want_iou) > 0.05 and np.isnan(want_iou).any()

  ties = margin < TIE
  assert ties.mean() < 0.01
  saved = read_predictions(predictions, gt_files)
  np.testing.assert_array_equal(saved[~ties], torch_preds[~ties])
  want_iou = numpy_iou(np.where(ties, saved, torch_preds), label_ids)
  got_iou = iou_array(results)
  np.testing.assert_array_equal(np.isnan(got_iou), np.isnan(want_iou))
  np.testing.assert_allclose(got_iou, want_iou, rtol=1e-12)
  assert results['miou'] == pytest.approx(np.nanmean(want_iou), rel=1e-12)

  assert results['class_names'] == [trainId2label[t].name for t in range(K)]
  assert results['images'] == len(gt_files) and results['seconds'] > 0
  assert results['protocol'] == {'mode': 'whole', 'window_size': None, 'window_stride': None,
                                 'flip': False, 'scales': [1.0], 'input_size': None,
                                 'resize_to': [HEIGHT, WIDTH], 'split': 'val',
                                 'dataset': 'cityscapes'}
  miou_line = next(line for line in stdout.splitlines() if line.startswith('mIoU'))
  assert miou_line.split() == ['mIoU', f'{100 * results["miou"]:.2f}']


def test_saved_predictions_score_the_same_in_cityscapesscripts(setup, one_device):
  results, _, predictions = one_device
  args = copy.copy(cs_eval.args)  # The module keeps its options in a global; leave it alone.
  args.evalInstLevelScore = False  # Needs instanceIds files; instance-weighted IoU is not ours.
  args.JSONOutput = False
  args.quiet = True
  args.predictionPath, args.predictionWalk = str(predictions), None
  gt_files = [str(f) for f in setup['gt_files']]
  # getPrediction finds each file the way the official script and the test server do.
  pred_files = [cs_eval.getPrediction(args, gt) for gt in gt_files]
  official = cs_eval.evaluateImgLists(pred_files, gt_files, args)

  want_iou = np.array([official['classScores'][trainId2label[t].name] for t in range(K)])
  got_iou = iou_array(results)
  np.testing.assert_array_equal(np.isnan(got_iou), np.isnan(want_iou))
  np.testing.assert_allclose(got_iou, want_iou, rtol=1e-12)
  assert results['miou'] == pytest.approx(official['averageScoreClasses'], rel=1e-12)


@pytest.mark.slow
def test_eight_devices_count_what_one_device_counts(setup, one_device):
  results, _, predictions = one_device
  tmp = setup['tmp']
  sharded, stdout = run_evaluate(setup['checkpoint'], setup['root'], tmp / 'results8.json',
                                 tmp / 'predictions8', '--batch-size', '1',
                                 env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
  assert 'on 8 device(s)' in stdout
  assert sharded['images'] == results['images'] == 5
  np.testing.assert_array_equal(sharded['confusion'], results['confusion'])
  # Every image's prediction comes back under its own name, not a neighbour's.
  np.testing.assert_array_equal(read_predictions(tmp / 'predictions8', setup['gt_files']),
                                read_predictions(predictions, setup['gt_files']))


@pytest.mark.slow
def test_two_processes_count_what_one_process_counts(setup, one_device):
  """Two processes with 2 devices each, launched as README's generic launch does: each reads
  its share of the split; the one confusion matrix equals the one-process run's."""
  results, _, predictions = one_device
  tmp = setup['tmp']
  args = ['-m', 'bisenet_jax.evaluate', '--checkpoint', str(setup['checkpoint']),
          '--data-root', str(setup['root']), '--resize-to', f'{HEIGHT}x{WIDTH}',
          '--output', str(tmp / 'results_2p.json'), '--save-predictions',
          str(tmp / 'predictions_2p')]
  processes = launch_processes(args, 2, 2, tmp)
  outputs = wait_for(processes)
  assert [p.returncode for p in processes] == [0, 0], outputs
  assert 'on 4 device(s)' in outputs[0] and 'mIoU' not in outputs[1]  # Process 0 reports.
  sharded = json.loads((tmp / 'results_2p.json').read_text())
  assert sharded['images'] == 5
  np.testing.assert_array_equal(sharded['confusion'], results['confusion'])
  np.testing.assert_array_equal(read_predictions(tmp / 'predictions_2p', setup['gt_files']),
                                read_predictions(predictions, setup['gt_files']))


@pytest.mark.slow
def test_an_exported_file_scores_what_its_checkpoint_scores(setup, one_device, tmp_path, capsys):
  """A float32 labels .onnx at the images' size, on ONNX Runtime: the same protocol, table and
  JSON; the mIoU of the checkpoint it came from to 0.01 points."""
  from bisenet_jax.export.__main__ import main as export_main
  results, _, _ = one_device
  export_main(['--checkpoint', str(setup['checkpoint']), '--format', 'onnx', '--outputs', 'labels',
               '--with-preprocessing', '--input-size', f'{HEIGHT}x{WIDTH}',
               '--output', str(tmp_path / 'r18.onnx')])
  evaluate.main(['--checkpoint', str(tmp_path / 'r18.onnx'), '--data-root', str(setup['root']),
                 '--resize-to', f'{HEIGHT}x{WIDTH}', '--output', str(tmp_path / 'results.json')])
  stdout = capsys.readouterr().out
  assert 'float32 ONNX Runtime' in stdout and f'input size {HEIGHT}x{WIDTH}' in stdout
  exported = json.loads((tmp_path / 'results.json').read_text())
  assert exported['images'] == results['images'] and exported['class_names'] == (
      results['class_names'])
  assert abs(exported['miou'] - results['miou']) < 1e-4
  assert np.abs(np.array(exported['confusion']) - results['confusion']).sum() <= 0.001 * np.sum(
      results['confusion'])
  with pytest.raises(SystemExit):
    evaluate.main(['--checkpoint', str(tmp_path / 'r18.onnx'), '--data-root',
                   str(setup['root']), '--mode', 'slide', '--window-size', '32x32',
                   '--window-stride', '16x16'])
  assert 'an exported file runs each whole image once' in capsys.readouterr().err


# Each pixel's red value // RED_STEP: a stand-in model whose labels are known without running one.
RED_STEP = 14  # 255 // 14 = 18, the last trainId.


def write_red_channel_model(path):
  """An ``.onnx`` with the interface and metadata of an exported ``--outputs labels
  --with-preprocessing --layout nhwc`` file, whose graph labels each pixel red // RED_STEP."""
  from onnx import TensorProto, helper
  nodes = [
      helper.make_node('Gather', ['images', 'red_index'], ['red'], axis=3),
      helper.make_node('Cast', ['red'], ['red_int'], to=TensorProto.INT32),
      helper.make_node('Div', ['red_int', 'step'], ['class_id']),
      helper.make_node('Cast', ['class_id'], ['labels'], to=TensorProto.UINT8)]
  graph = helper.make_graph(
      nodes, 'red_channel',
      [helper.make_tensor_value_info('images', TensorProto.UINT8, ['N', 'H', 'W', 3])],
      [helper.make_tensor_value_info('labels', TensorProto.UINT8, ['N', 'H', 'W'])],
      initializer=[helper.make_tensor('red_index', TensorProto.INT64, [], [0]),
                   helper.make_tensor('step', TensorProto.INT32, [], [RED_STEP])])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
  interface = Interface(HEIGHT, WIDTH, K, layout='nhwc', outputs='labels', preprocessing=True,
                        any_input_size=True)
  helper.set_model_props(model, {INTERFACE_KEY: interface.to_json(),
                                 DATASET_KEY: json.dumps(sources.CITYSCAPES.to_json())})
  onnx.checker.check_model(model)
  onnx.save(model, str(path))
  return path


# JAX, Flax and orbax cannot be imported in this process: evaluating an exported file must not
# need them.
WITHOUT_JAX = textwrap.dedent('''
    import sys
    for name in ('jax', 'jaxlib', 'flax', 'orbax', 'orbax.checkpoint'):
      sys.modules[name] = None
    from bisenet_jax import evaluate
    evaluate.main(sys.argv[1:])
    assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'orbax')
                and sys.modules[m] is not None]
''')


def test_an_exported_file_is_scored_without_jax_as_with_it(setup, tmp_path, capsys):
  model = write_red_channel_model(tmp_path / 'red.onnx')
  # The frames' size as the test Resize (the file's dataset record says Cityscapes' 1024x2048).
  flags = ['--checkpoint', str(model), '--data-root', str(setup['root']), '--resize-to',
           f'{HEIGHT}x{WIDTH}']
  result = subprocess.run(
      [sys.executable, '-c', WITHOUT_JAX, *flags, '--output', str(tmp_path / 'no_jax.json'),
       '--save-predictions', str(tmp_path / 'predictions'), '--batch-size', '2'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert 'float32 ONNX Runtime' in result.stdout
  without_jax = json.loads((tmp_path / 'no_jax.json').read_text())

  # The predictions are the red channel's, and score what NumPy scores them.
  red = np.stack([cv2.imread(str(f), cv2.IMREAD_COLOR)[..., 2] for f in setup['image_files']])
  want = red // RED_STEP
  assert len(np.unique(want)) >= 5
  np.testing.assert_array_equal(read_predictions(tmp_path / 'predictions', setup['gt_files']),
                                want)
  label_ids = np.stack([cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in setup['gt_files']])
  want_iou = numpy_iou(want, label_ids)
  np.testing.assert_array_equal(np.isnan(iou_array(without_jax)), np.isnan(want_iou))
  np.testing.assert_allclose(iou_array(without_jax), want_iou, rtol=1e-12)

  # The same run where JAX can be imported (it is, in this process) gives the same JSON; batches
  # of 2 (the last one padded) count what batches of 1 count.
  evaluate.main([*flags, '--output', str(tmp_path / 'with_jax.json')])
  with_jax = json.loads((tmp_path / 'with_jax.json').read_text())
  assert {**without_jax, 'seconds': 0} == {**with_jax, 'seconds': 0}

  # Processes are connected through JAX: an exported file is evaluated in one.
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main([*flags, '--distributed', 'yes'])
  assert exit_info.value.code == 2
  assert 'drop --distributed yes' in capsys.readouterr().err


def _garbage_image(root):
  """An undecodable first image (so the error comes before any compilation)."""
  first_image, _ = write_fake_cityscapes(root)[0]
  first_image.write_bytes(b'\x89PNG junk')


def _seven_classes(root, tmp):
  write_fake_cityscapes(root)
  model = torch_model.build_reference('r18', num_classes=7)
  torch_support.save_official_checkpoint(model, tmp / 'seven.pth', kind='full')
  return tmp / 'seven.pth'


@pytest.mark.parametrize('case, expected', [
    ('missing root', 'does not exist'),
    ('empty split', 'no *_leftImg8bit.png files'),
    ('unreadable image', 'Cannot decode image'),
    ('seven classes', 'has 7 classes, Cityscapes has 19'),
    ('bad scales', "--scales '1.0,big'"),
    ('bad crop', "--window-size '1024' is not a size: write HEIGHTxWIDTH"),
    ('old crop flag', '--crop is gone: use --window-size HEIGHTxWIDTH'),
    ('old base size flag', '--base-size is gone: use --resize-to HEIGHTxWIDTH'),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(setup, tmp_path, capsys, case, expected):
  root, checkpoint, extra = tmp_path / 'cityscapes', setup['checkpoint'], []
  if case == 'empty split':
    (root / 'leftImg8bit' / 'val').mkdir(parents=True)
  elif case == 'unreadable image':
    _garbage_image(root)
  elif case == 'seven classes':
    checkpoint = _seven_classes(root, tmp_path)
  elif case == 'bad scales':
    extra = ['--scales', '1.0,big']
  elif case == 'bad crop':
    extra = ['--mode', 'slide', '--window-size', '1024', '--window-stride', '768x768']
  elif case == 'old crop flag':
    extra = ['--mode', 'slide', '--crop', '1024x1024', '--window-stride', '768x768']
  elif case == 'old base size flag':
    extra = ['--base-size', f'{WIDTH}x{HEIGHT}']
  output = tmp_path / 'out' / 'results.json'
  with pytest.raises(SystemExit) as exit_info:
    evaluate.main(['--checkpoint', str(checkpoint), '--data-root', str(root),
                   '--resize-to', f'{HEIGHT}x{WIDTH}', '--output', str(output), *extra])
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: '), stderr
  assert expected in stderr
  assert not output.exists() and not list(tmp_path.glob('out/*'))


def test_a_pth_is_read_once(setup, one_device, tmp_path, capsys, monkeypatch):
  """Unpickling a training checkpoint takes seconds: recognising the network, finding its EMA and
  reading its weights all use one ``torch.load``."""
  state = setup['model'].state_dict()
  torch.save({'model': state, 'model_ema': state}, tmp_path / 'with_ema.pth')
  loads = []
  load = torch.load
  monkeypatch.setattr(torch, 'load', lambda *args, **kwargs: loads.append(args) or load(
      *args, **kwargs))
  evaluate.main(['--checkpoint', str(tmp_path / 'with_ema.pth'), '--data-root',
                 str(setup['root']), '--resize-to', f'{HEIGHT}x{WIDTH}', '--output',
                 str(tmp_path / 'results.json')])
  assert len(loads) == 1
  assert 'EMA weights' in capsys.readouterr().out
  results, _, _ = one_device
  np.testing.assert_array_equal(json.loads((tmp_path / 'results.json').read_text())['confusion'],
                                results['confusion'])


def test_records_score_what_the_files_score(setup, one_device, tmp_path, capsys):
  """--records: the split is decoded once into records and read from them."""
  evaluate.main(['--checkpoint', str(setup['checkpoint']), '--data-root', str(setup['root']),
                 '--resize-to', f'{HEIGHT}x{WIDTH}', '--records', str(tmp_path / 'records'),
                 '--output', str(tmp_path / 'results.json')])
  assert 'records: decoded 5 samples' in capsys.readouterr().out
  assert len([p for p in (tmp_path / 'records').iterdir() if not p.name.startswith('.')]) == 1
  results, _, _ = one_device
  np.testing.assert_array_equal(json.loads((tmp_path / 'results.json').read_text())['confusion'],
                                results['confusion'])
