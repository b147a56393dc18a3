"""FCN-BiSeNetV1, ResNet-50 (v1c stem), Cityscapes: sssegmentation's recipe, 77.78% val mIoU.

  python train.py --config configs/r50.py --workdir runs/r50 --config.data.root=/data/cityscapes

It should reach about 77.8% mIoU on Cityscapes val (single scale, full resolution). The backbone
starts from the official resnet50_v1c-2cccc1ad.pth (config.init.backbone), downloaded once into
~/.cache/bisenet_jax/imagenet/ (docs/reference.md §3). The ``:demo`` variant
(``--config configs/r50.py:demo``) runs the same system on synthetic scenes, from scratch; R50
is about four times slower per step than R18.
"""

from bisenet_jax.train import config


def get_config(arg=None):
  return config.get_config('bisenetv1_r50', arg)
