"""FCN-BiSeNetV1, ResNet-18 (v1c stem), Cityscapes: sssegmentation's recipe, 75.76% val mIoU.

Reference recipe (16 images of 1024x1024 per step over all devices, SGD lr 0.05 poly, 159,960
steps, ImageNet-initialised backbone):

  python train.py --config configs/r18.py --workdir runs/r18 --config.data.root=/data/cityscapes

It should reach about 75.8% mIoU on Cityscapes val (single scale, full resolution). The backbone
starts from the official resnet18_v1c-b5776b93.pth (config.init.backbone), downloaded once into
~/.cache/bisenet_jax/imagenet/ ($BISENET_JAX_CACHE/imagenet/); offline, put it there or pass its
path, or train from scratch on purpose with --config.init.backbone=none.

Embedded demo (no download, backbone from scratch: synthetic street scenes, written once under
~/.cache/bisenet_jax):

  python train.py --config configs/r18.py:demo

It trains for a few minutes on a laptop CPU and should reach at least 50% mIoU on the
synthetic val split. Override any key, e.g. ``--config.batch_size=8``. sssegmentation's
training options (EMA, OHEM, the loss table, float16, gradient accumulation) are keys too, off
by default: docs/training_options.md.
"""

from bisenet_jax.train import config


def get_config(arg=None):
  return config.get_config('bisenetv1_r18', arg)
