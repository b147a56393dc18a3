"""FCN + BiSeNetV2, Cityscapes: sssegmentation's recipe, trained from scratch, 74.62% val mIoU.

Reference recipe (docs/reference.md §10.3: BiSeNetV1's, with five heads): 16 images of
1024x1024 per step over all devices, SGD lr 0.05 poly (power 0.9, min 1e-4) multiplied by a
linear warm-up over 1,000 steps from 0.1, momentum 0.9, weight decay 5e-4, 159,960 steps
(860 epochs), SyncBN, plain cross-entropy on the main head and on four auxiliary heads:

  python train.py --config configs/bisenetv2.py --workdir runs/bisenetv2 \\
      --config.data.root=/data/cityscapes

It should reach about 74.6% mIoU on Cityscapes val (single scale, full resolution); the
official weights are fcn_bisenetv2_cityscapes.pth.

Embedded demo (synthetic street scenes, written once under ~/.cache/bisenet_jax), a few minutes
on a laptop CPU:

  python train.py --config configs/bisenetv2.py:demo
"""

from bisenet_jax.train import config


def get_config(arg=None):
  return config.get_config('bisenetv2', arg)
