"""Tests of bisenet_jax.data.synthetic: determinism, the Cityscapes and folder layouts, caching."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from bisenet_jax.data import synthetic
from bisenet_jax.data.classes import read_classes_file
from bisenet_jax.data.folder import SegmentationFolder
from bisenet_jax.data.cityscapes import LABEL_ID_TO_TRAIN_ID, NUM_CLASSES, CityscapesFolder

SMALL = dict(num_train=3, num_val=2, height=64, width=128)


def file_bytes(root):
  return {path.relative_to(root): path.read_bytes() for path in root.rglob('*') if path.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
  first = synthetic.write_synthetic_cityscapes(tmp_path / 'a', seed=1, **SMALL)
  second = synthetic.write_synthetic_cityscapes(tmp_path / 'b', seed=1, **SMALL)
  other = synthetic.write_synthetic_cityscapes(tmp_path / 'c', seed=2, **SMALL)
  assert file_bytes(first) == file_bytes(second)
  assert file_bytes(first).keys() == file_bytes(other).keys()
  assert file_bytes(first) != file_bytes(other)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'c']  # no staging folders left


def test_written_layout_is_read_by_cityscapes_folder(tmp_path):
  root = synthetic.write_synthetic_cityscapes(tmp_path / 'demo', **SMALL)
  assert (root / 'leftImg8bit/train/synthetic/synthetic_000000_000002_leftImg8bit.png').is_file()
  assert (root / 'gtFine/val/synthetic/synthetic_000000_000001_gtFine_labelIds.png').is_file()
  train, val = CityscapesFolder(root, 'train'), CityscapesFolder(root, 'val')
  assert (len(train), len(val)) == (3, 2)
  sample = val[0]
  assert sample['image'].shape == (64, 128, 3) and sample['label'].shape == (64, 128)
  assert sample['name'] == 'synthetic/synthetic_000000_000000'
  assert 255 in sample['label'][-2:]  # the ego vehicle along the bottom edge is ignored


def test_scenes_use_many_real_classes():
  present = set()
  for index in range(8):
    _, label_ids = synthetic.draw_street_scene(np.random.default_rng(index), 256, 512)
    present |= set(np.unique(label_ids).tolist())
  train_ids = {int(LABEL_ID_TO_TRAIN_ID[i]) for i in present} - {255}
  assert len(train_ids) >= 10 and train_ids <= set(range(NUM_CLASSES))
  assert {1, 4} <= present  # 'ego vehicle' and 'static' map to the ignore label


def test_ensure_reuses_a_matching_copy_and_regenerates_otherwise(tmp_path, monkeypatch):
  root = synthetic.ensure_synthetic_cityscapes(tmp_path, **SMALL)
  marker = json.loads((root / 'synthetic.json').read_text())
  assert marker == {'generator_version': synthetic.streets.GENERATOR_VERSION, 'seed': 0, **SMALL}

  def fail(*args, **kwargs):
    raise AssertionError('regenerated a matching copy')
  with monkeypatch.context() as patch:
    patch.setattr(synthetic.streets, 'write_synthetic_cityscapes', fail)
    assert synthetic.ensure_synthetic_cityscapes(tmp_path, **SMALL) == root

  changed = synthetic.ensure_synthetic_cityscapes(tmp_path, **{**SMALL, 'num_val': 1})
  assert changed == root and len(CityscapesFolder(root, 'val')) == 1

  (root / 'synthetic.json').unlink()  # an incomplete copy has no marker
  synthetic.ensure_synthetic_cityscapes(tmp_path, **SMALL)
  assert len(CityscapesFolder(root, 'val')) == 2
  assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic_cityscapes']


def test_unknown_parameter_is_rejected(tmp_path):
  with pytest.raises(TypeError, match='num_tran'):
    synthetic.ensure_synthetic_cityscapes(tmp_path, num_tran=3)


def test_drawing_equals_opencv4(opencv4_golden, sha256):
  """The demo's data depends on OpenCV's shape drawing and blur: they must match OpenCV 4's."""
  image, label_ids = synthetic.draw_street_scene(np.random.default_rng(3), 96, 192)
  assert sha256(image) == bytes(opencv4_golden['synthetic/image_sha256'])
  assert sha256(label_ids) == bytes(opencv4_golden['synthetic/label_sha256'])


# The garden plots: a folder-layout dataset with classes of its own.

GARDEN = dict(num_train=4, num_val=2, height=48, width=64)


def test_garden_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
  first = synthetic.write_synthetic_folder(tmp_path / 'a', seed=1, **GARDEN)
  second = synthetic.write_synthetic_folder(tmp_path / 'b', seed=1, **GARDEN)
  other = synthetic.write_synthetic_folder(tmp_path / 'c', seed=2, **GARDEN)
  assert file_bytes(first) == file_bytes(second)
  assert file_bytes(first).keys() == file_bytes(other).keys()
  assert file_bytes(first) != file_bytes(other)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['a', 'b', 'c']


def test_garden_layout_is_read_by_segmentation_folder(tmp_path):
  root = synthetic.write_synthetic_folder(tmp_path / 'garden', **GARDEN)
  assert read_classes_file(root / 'classes.txt') == synthetic.GARDEN_CLASSES
  assert synthetic.GARDEN_CLASSES.names == ('soil', 'grass', 'stone', 'water', 'flower')
  train, val = SegmentationFolder(root, 'train'), SegmentationFolder(root, 'val')
  assert train.names == ('tall/0002', 'tall/0003', 'wide/0000', 'wide/0001')
  assert val.names == ('tall/0001', 'wide/0000')
  with Image.open(root / 'images/train/wide/0000.jpg') as image:
    assert image.format == 'JPEG'
  with Image.open(root / 'masks/train/wide/0000.png') as mask:
    assert mask.format == 'PNG' and mask.mode == 'P'
    assert mask.getpalette()[3:6] == synthetic.GARDEN_CLASSES.palette[1].tolist()
  for source in (train, val):
    shapes = {source[i]['label'].shape for i in range(len(source))}
    assert shapes == {(48, 64), (64, 48)}
    assert source.check_all().sum() > 0
  assert 255 in np.concatenate([train[i]['label'].ravel() for i in range(len(train))])


def test_garden_plots_use_every_class_and_ignore_some_pixels():
  counts = np.zeros(256, np.int64)
  for index in range(8):
    image, mask = synthetic.draw_garden_plot(np.random.default_rng(index), 96, 128)
    assert image.shape == (96, 128, 3) and image.dtype == np.uint8 and mask.shape == (96, 128)
    counts += np.bincount(mask.ravel(), minlength=256)
  assert set(np.flatnonzero(counts)) == {0, 1, 2, 3, 4, 255}
  share = counts[:5] / counts[:5].sum()
  assert share.min() > 0.02 and share[0] < 0.8  # every class is learnable, soil not everything


def test_garden_ensure_reuses_a_matching_copy_and_regenerates_otherwise(tmp_path, monkeypatch):
  root = synthetic.ensure_synthetic_folder(tmp_path, **GARDEN)
  assert root == tmp_path / 'synthetic_folder'
  marker = json.loads((root / 'synthetic.json').read_text())
  assert marker == {'generator_version': synthetic.gardens.GENERATOR_VERSION, 'seed': 0, **GARDEN}

  def fail(*args, **kwargs):
    raise AssertionError('regenerated a matching copy')
  with monkeypatch.context() as patch:
    patch.setattr(synthetic.gardens, 'write_synthetic_folder', fail)
    assert synthetic.ensure_synthetic_folder(tmp_path, **GARDEN) == root

  synthetic.ensure_synthetic_folder(tmp_path, **{**GARDEN, 'num_val': 4})
  assert len(SegmentationFolder(root, 'val')) == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic_folder']


# Street clips, to try videos on.

CLIP = dict(height=64, width=96, frames=8)


def clip_frames(seed=0):
  return list(synthetic.draw_street_clip(np.random.default_rng(seed), CLIP['height'],
                                         CLIP['width'], CLIP['frames']))


def test_a_clip_moves_smoothly_through_one_scene():
  frames = clip_frames()
  assert len(frames) == 8 and {f.shape for f in frames} == {(64, 96, 3)}
  assert all(f.dtype == np.uint8 for f in frames)
  change = lambda a, b: np.abs(a.astype(int) - b).mean()  # noqa: E731
  steps = [change(a, b) for a, b in zip(frames, frames[1:])]
  # Every frame moves, by a small part of what the whole clip moves.
  assert min(steps) > 0 and max(steps) < 0.5 * change(frames[0], frames[-1])
  np.testing.assert_array_equal(frames[-1], clip_frames()[-1])  # Deterministic.
  assert change(frames[0], clip_frames(seed=1)[0]) > 10  # Another seed, another scene.


def run_main(capsys, *args):
  from bisenet_jax.data.synthetic.__main__ import main
  with pytest.raises(SystemExit) as exit_info:
    main(list(args))
  return exit_info.value.code, capsys.readouterr()


def write_clip(tmp_path, name, *options):
  from bisenet_jax.data.synthetic.__main__ import main
  path = tmp_path / name
  main(['--video', str(path), '--size', '64x96', '--frames', '8', '--fps', '12', *options])
  return path


def test_an_mp4_clip_is_read_back_by_opencv(tmp_path, capsys):
  path = write_clip(tmp_path, 'clip.mp4')
  assert capsys.readouterr().out == f'wrote {path}: 8 frames of 64x96 at 12 frames/s (0.7 s)\n'
  capture = cv2.VideoCapture(str(path))
  assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12)
  decoded = []
  while (read := capture.read())[0]:
    decoded.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
  assert len(decoded) == 8 and decoded[0].shape == (64, 96, 3)
  assert np.abs(decoded[-1].astype(int) - clip_frames()[-1]).mean() < 8  # mp4v is lossy.
  assert [p.name for p in tmp_path.iterdir()] == ['clip.mp4']


def test_a_y4m_clip_is_a_header_and_i420_frames(tmp_path):
  data = write_clip(tmp_path, 'clip.y4m').read_bytes()
  header = b'YUV4MPEG2 W96 H64 F12:1 Ip A1:1 C420jpeg\n'
  frame_bytes = 64 * 96 * 3 // 2
  assert data.startswith(header)
  assert len(data) == len(header) + 8 * (len(b'FRAME\n') + frame_bytes)
  last = data[-frame_bytes:]
  assert data[-frame_bytes - 6:-frame_bytes] == b'FRAME\n'
  assert last == cv2.cvtColor(clip_frames()[-1], cv2.COLOR_RGB2YUV_I420).tobytes()
  capture = cv2.VideoCapture(str(tmp_path / 'clip.y4m'))  # FFmpeg reads it too.
  assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(12)
  assert sum(1 for _ in iter(lambda: capture.read()[0], False)) == 8


@pytest.mark.parametrize('args, expected', [
    (['--video', 'clip.gif'], 'name it .mp4 (mp4v) or .y4m'),
    (['--video', 'clip.mp4', '--size', '63x96'], 'give even sides of at least 32'),
    (['--video', 'clip.mp4', '--fps', '0'], 'give a frame rate above 0'),
    (['--video', 'clip.mp4', '--frames', '0'], "--frames '0' must be a positive integer"),
    (['street', 'data', '--video', 'clip.mp4'], 'give KIND OUTPUT to write a dataset, or --video'),
    (['street'], 'give KIND OUTPUT to write a dataset, or --video'),
])
def test_bad_clip_arguments_are_one_line_errors(tmp_path, monkeypatch, capsys, args, expected):
  monkeypatch.chdir(tmp_path)
  code, captured = run_main(capsys, *args)
  assert code == 2 and captured.err.count('\n') == 1 and expected in captured.err, captured.err
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('name', ['clip.mp4', 'clip.y4m'])
def test_a_clip_that_fails_midway_leaves_no_file(tmp_path, monkeypatch, name):
  from bisenet_jax.data.synthetic import __main__ as cli

  def failing(*args):
    frames = synthetic.draw_street_clip(*args)
    yield next(frames)
    raise KeyboardInterrupt

  monkeypatch.setattr(cli, 'draw_street_clip', failing)
  with pytest.raises(KeyboardInterrupt):
    write_clip(tmp_path, name)
  assert list(tmp_path.iterdir()) == []
