"""Tests of ``python -m bisenet_jax.predict``: files written, colours, and errors.

The model is the PyTorch reference with random weights saved as an official ``.pth``; the
expected mask of each image is Cityscapes' ``PALETTE[argmax]`` of ``inference.predict_labels``
run here, directly on the Flax model, on the image resized to fit the test Resize target
(``--resize-to``) and upsampled back to the image's own (odd) size.
"""

import functools

import cv2
import jax
import numpy as np
import pytest

from bisenet_jax import load_pretrained, predict
from bisenet_jax.data import transforms
from bisenet_jax.data.cityscapes import PALETTE
from bisenet_jax.data.synthetic import draw_street_scene
from bisenet_jax.data.normalization import normalize
from bisenet_jax.eval import inference
from labelled_files import read_rgb

# Input files -> (height, width); odd sizes that no stride divides. Two share a size.
IMAGES = {'folder/a.png': (61, 97), 'folder/sub/b.jpg': (61, 97), 'single.png': (45, 70)}


def write_images(root):
  for index, (name, (height, width)) in enumerate(IMAGES.items()):
    image, _ = draw_street_scene(np.random.default_rng(index), height, width)
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


# The test Resize target of predict's runs here: every image's size changes (61x97 -> 81x128).
RESIZE_TO = (90, 128)


def expected_labels(model, variables, image, resize_to=None):
  """The protocol, written directly: the image resized to fit ``resize_to`` keeping its aspect
  ratio (None: as it is), ``predict_labels`` at the image's own size."""
  logits_fn = lambda x: model.apply(variables, x, train=False)
  labels_fn = jax.jit(functools.partial(inference.predict_labels, logits_fn,
                                        out_size=image.shape[:2]))
  if resize_to is not None:
    image = transforms.resize_keep_ratio({'image': image}, resize_to)['image']
  with jax.default_matmul_precision('highest'):
    return np.asarray(labels_fn(normalize(image)[None]))[0]


@pytest.mark.slow  # Three image sizes from a .pth (tests/test_export.py predicts quickly).
def test_masks_overlays_and_legend_for_a_folder_and_a_file(random_r18_pth, tmp_path, capsys):
  write_images(tmp_path)
  output = tmp_path / 'out' / 'nested'  # Created by the command.
  predict.main(['--checkpoint', str(random_r18_pth), str(tmp_path / 'folder'),
                str(tmp_path / 'single.png'), '--output', str(output), '--overlay',
                '--resize-to', f'{RESIZE_TO[0]}x{RESIZE_TO[1]}'])
  assert 'wrote 3 mask(s)' in capsys.readouterr().out

  model, variables = load_pretrained(random_r18_pth)
  stems = {'folder/a.png': 'a', 'folder/sub/b.jpg': 'sub/b', 'single.png': 'single'}
  for name, stem in stems.items():
    image = read_rgb(tmp_path / name)
    labels = expected_labels(model, variables, image, RESIZE_TO)
    assert len(np.unique(labels)) >= 2  # A colour mix-up cannot hide behind a uniform mask.
    mask = read_rgb(output / f'{stem}_mask.png')
    np.testing.assert_array_equal(mask, PALETTE[labels], err_msg=name)
    overlay = read_rgb(output / f'{stem}_overlay.png').astype(int)
    blended = (image.astype(int) + mask.astype(int)) / 2
    assert np.abs(overlay - blended).max() <= 0.5, name  # Rounded to the nearest integer.

  legend = read_rgb(output / 'legend.png')
  legend_colours = {tuple(c) for c in legend.reshape(-1, 3)}
  assert all(tuple(c) in legend_colours for c in PALETTE)
  assert {p.name for p in output.iterdir()} == {
      'a_mask.png', 'a_overlay.png', 'single_mask.png', 'single_overlay.png', 'sub', 'legend.png'}


@pytest.mark.parametrize('case', ['unreadable', 'missing'])
def test_bad_image_is_a_one_line_error_naming_it(random_r18_pth, tmp_path, capsys, case):
  bad = tmp_path / 'bad.png'
  if case == 'unreadable':
    bad.write_bytes(b'not a png')
  with pytest.raises(SystemExit) as exit_info:
    predict.main(['--checkpoint', str(random_r18_pth), str(bad), '--output', str(tmp_path / 'out')])
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err
  assert len(stderr.strip().splitlines()) == 1 and stderr.startswith('error: '), stderr
  assert str(bad) in stderr
  assert not list(tmp_path.glob('out/*_mask.png'))
