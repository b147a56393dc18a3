"""Pascal VOC 2012: 21 classes, mmsegmentation's 512x512 recipe; BiSeNetV1 R18 by default.

  python train.py --config configs/voc.py --config.data.root=/data/VOCdevkit --workdir runs/voc

Reads JPEGImages/, SegmentationClass/ (palette PNGs) and ImageSets/Segmentation/{train,val}.txt
of VOC2012 (the root may be VOCdevkit, VOC2012 or the folder above them); 255 is ignored. For
the augmented set (SBD, 10,582 images) add `--config.data.mask_dir=SegmentationClassAug` and a
train list that names its ids. Batch 16, 512x512 crops, SGD lr 0.01, 20,000 steps. Any
network trains on it with one key: `--config.model.name=bisenetv2` (or `fastscnn`, ...).
"""

from bisenet_jax.train import config


def _voc(arch):
  return config.mmseg_512_config(arch, 'voc', num_classes=21, total_steps=20_000)


def get_config(arg=None):
  return config.get_config('bisenetv1_r18', arg, {'': _voc})
