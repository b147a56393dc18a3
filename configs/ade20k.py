"""ADE20K: 150 classes, mmsegmentation's 512x512 recipe; BiSeNetV1 R18 by default.

  python train.py --config configs/ade20k.py --config.data.root=/data/ADEChallengeData2016 \
      --workdir runs/ade20k

Reads images/{training,validation}/*.jpg and annotations/{training,validation}/*.png; mask value
0 ("other") is ignored and value v is class v - 1 (reduce-zero-label). Batch 16, 512x512 crops,
SGD lr 0.01, 80,000 steps. Any network trains on it with one key:
`--config.model.name=bisenetv2` (or `fastscnn`, ...).
"""

from bisenet_jax.train import config


def _ade20k(arch):
  return config.mmseg_512_config(arch, 'ade20k', num_classes=150, total_steps=80_000)


def get_config(arg=None):
  return config.get_config('bisenetv1_r18', arg, {'': _ade20k})
