"""Deployed equals trained: a checkpoint and its exported file follow one test protocol.

The dataset's test Resize (its target recorded in the checkpoint and in the file) applies
whichever runs the model: ``evaluate`` on a checkpoint and on its float32 ``.onnx`` score the
same mIoU, and ``Segmenter`` gives the same labels on images whose size the resize changes, for
the folder, Pascal VOC and Cityscapes layouts. Tiny data (images of two sizes, a few dozen
pixels a side) and Fast-SCNN with the PyTorch reference's random weights (its labels vary
across a scene); each dataset records a small target that still changes every image's size.
"""

import dataclasses
import json

import cv2
import numpy as np
import onnx
import pytest

from bisenet_jax import Segmenter, checkpoint, evaluate
from bisenet_jax.data import cityscapes, sources
from bisenet_jax.data.class_sets import VOC_CLASSES
from bisenet_jax.data.synthetic import GARDEN_CLASSES, draw_street_scene, write_synthetic_folder
from bisenet_jax.export import INTERFACE_KEY, Interface
from bisenet_jax.export.__main__ import main as export_main
from bisenet_jax.specs import DatasetSpec, ModelSpec
import torch_support

pytestmark = pytest.mark.xdist_group('protocol')

SIZES = ((30, 44), (36, 28))  # Each layout's images: one wide, one tall.
# layout -> the test Resize target its checkpoint records: small, and every image's size
# changes (a folder's 30x44 frame becomes 48x70, Cityscapes' 64x94).
TARGETS = {'folder': (48, 80), 'voc': (40, 96), 'cityscapes': (64, 128)}


def write_folder(root):
  """The garden set's folder layout (classes.txt, palette masks, ignored pixels): 30x44 and
  44x30 frames."""
  return write_synthetic_folder(root, num_train=0, num_val=4, height=SIZES[0][0],
                                width=SIZES[0][1])


def street_scenes(seed_base):
  """Two street scenes of each size: (image, Cityscapes labelIds) pairs."""
  return [draw_street_scene(np.random.default_rng([seed_base, index]), *SIZES[index % 2])
          for index in range(4)]


def write_voc(root):
  """VOCdevkit/VOC2012 with a val list; the masks are the scenes' trainIds (VOC class ids)."""
  voc = root / 'VOCdevkit' / 'VOC2012'
  for folder in ('JPEGImages', 'SegmentationClass', 'ImageSets/Segmentation'):
    (voc / folder).mkdir(parents=True)
  ids = []
  for index, (image, label_ids) in enumerate(street_scenes(1)):
    ids.append(f'2007_{index:06d}')
    assert cv2.imwrite(str(voc / 'JPEGImages' / f'{ids[-1]}.jpg'),
                       cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert cv2.imwrite(str(voc / 'SegmentationClass' / f'{ids[-1]}.png'),
                       cityscapes.LABEL_ID_TO_TRAIN_ID[label_ids])
  (voc / 'ImageSets/Segmentation/val.txt').write_text('\n'.join(ids) + '\n')
  return root


def write_cityscapes(root):
  for index, (image, label_ids) in enumerate(street_scenes(2)):
    stem = f'city_000000_{index:06d}'
    for folder, name, array in (('leftImg8bit', 'leftImg8bit', cv2.cvtColor(image,
                                                                             cv2.COLOR_RGB2BGR)),
                                ('gtFine', 'gtFine_labelIds', label_ids)):
      path = root / folder / 'val' / 'city' / f'{stem}_{name}.png'
      path.parent.mkdir(parents=True, exist_ok=True)
      assert cv2.imwrite(str(path), array)
  return root


LAYOUTS = {
    'folder': (write_folder, DatasetSpec('folder', GARDEN_CLASSES, resize_to=TARGETS['folder'])),
    'voc': (write_voc, DatasetSpec('voc', VOC_CLASSES, resize_to=TARGETS['voc'])),
    'cityscapes': (write_cityscapes, dataclasses.replace(sources.CITYSCAPES,
                                                         resize_to=TARGETS['cityscapes'])),
}


def save_model(directory, dataset, seed=3):
  """Fast-SCNN with the PyTorch reference's random weights, recording ``dataset``."""
  from bisenet_jax.bench import torch_models
  num_classes = dataset.classes.num_classes
  pth = directory.with_suffix('.pth')
  build = torch_models.reference_builder('fastscnn')
  model = torch_support.randomize_(build(num_classes=num_classes), seed=seed)
  torch_support.save_official_checkpoint(model, pth, kind='full')
  _, variables = checkpoint.load_pretrained(pth)
  return checkpoint.save_model(directory, variables, ModelSpec('fastscnn', num_classes), dataset)


# The folder layout in the quick tier (the case of a model trained on one's own data); the
# others, which add an export and two compilations each, in the slow one.
@pytest.fixture(scope='module', params=[
    'folder', pytest.param('voc', marks=pytest.mark.slow),
    pytest.param('cityscapes', marks=pytest.mark.slow)])
def layout(request, tmp_path_factory):
  """(name, data root, checkpoint, its default float32 .onnx) of one layout."""
  name = request.param
  folder = tmp_path_factory.mktemp(name)
  write, dataset = LAYOUTS[name]
  root = write(folder / 'data')
  model = save_model(folder / 'model', dataset)
  onnx_path = folder / 'model.onnx'
  export_main(['--checkpoint', str(model), '--format', 'onnx', '--output', str(onnx_path)])
  return name, root, model, onnx_path


def scores_of(model, root, output, *flags):
  evaluate.main(['--checkpoint', str(model), '--data-root', str(root), '--output', str(output),
                 *flags])
  return json.loads(output.read_text())


def test_a_checkpoint_and_its_export_score_the_same_through_the_recorded_resize(
    layout, tmp_path, capsys):
  name, root, model, onnx_path = layout
  target = TARGETS[name]
  recorded = Interface.from_json(_metadata(onnx_path)[INTERFACE_KEY])
  assert recorded.resize_to == target
  checkpoint_scores = scores_of(model, root, tmp_path / 'checkpoint.json')
  exported_scores = scores_of(onnx_path, root, tmp_path / 'onnx.json')
  protocol = f'resize to {target[0]}x{target[1]}, {name} split val'
  assert capsys.readouterr().out.count(protocol) == 2
  for scores in (checkpoint_scores, exported_scores):
    assert scores['protocol']['resize_to'] == list(target) and scores['images'] == 4
  assert 0 < checkpoint_scores['miou'] < 1
  assert abs(exported_scores['miou'] - checkpoint_scores['miou']) < 1e-4  # 0.01 points.
  confusion = np.array(checkpoint_scores['confusion'])
  difference = np.abs(np.array(exported_scores['confusion']) - confusion).sum()
  assert difference <= 1e-3 * confusion.sum()  # Exact float ties at most.


def test_an_exported_file_of_an_earlier_version_follows_the_datasets_resize(layout, tmp_path):
  """A file whose interface does not record the test resize follows the dataset, as its
  checkpoint does: its dataset record here (``--resize-to`` would come first)."""
  name, root, model, onnx_path = layout
  old = onnx.load(str(onnx_path))
  entry = next(p for p in old.metadata_props if p.key == INTERFACE_KEY)
  fields = json.loads(entry.value)
  del fields['resize_to']
  entry.value = json.dumps(fields)
  onnx.save(old, str(tmp_path / 'old.onnx'))
  old_scores = scores_of(tmp_path / 'old.onnx', root, tmp_path / 'old.json')
  new_scores = scores_of(onnx_path, root, tmp_path / 'new.json')
  assert old_scores['protocol']['resize_to'] == list(TARGETS[name])
  assert old_scores['confusion'] == new_scores['confusion']
  flagged = scores_of(tmp_path / 'old.onnx', root, tmp_path / 'flagged.json', '--resize-to',
                      '30x44')
  assert flagged['protocol']['resize_to'] == [30, 44]


def test_the_segmenter_gives_the_checkpoints_labels_through_the_file(layout):
  name, _, model, onnx_path = layout
  jax_segmenter, onnx_segmenter = Segmenter.load(model), Segmenter.load(onnx_path)
  assert jax_segmenter.resize_to == onnx_segmenter.resize_to == TARGETS[name]
  assert onnx_segmenter.dataset == jax_segmenter.dataset
  image = street_scenes(3)[0][0]  # 30x44: the resize makes it bigger.
  expected = jax_segmenter(image)
  assert expected.shape == image.shape[:2] and len(np.unique(expected)) >= 2
  assert (onnx_segmenter(image) == expected).mean() >= 0.999  # Float ties at most.
  np.testing.assert_allclose(onnx_segmenter(image, logits=True), jax_segmenter(image, logits=True),
                             atol=1e-3)


def _metadata(path):
  return {p.key: p.value for p in onnx.load(str(path)).metadata_props}
