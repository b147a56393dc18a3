"""Your own labelled images (the generic folder layout), FCN-BiSeNetV1 ResNet-18 by default.

  ROOT/classes.txt               one class per line: `name` or `name R G B`
  ROOT/images/{train,val}/...    .jpg / .jpeg / .png
  ROOT/masks/{train,val}/...     single-channel .png of class indices, 255 = ignore

  python train.py --config configs/custom.py --config.data.root=ROOT --workdir runs/mine

The recipe is for a few hundred to a few thousand images of any size: resized to fit 512x1024
at scales 0.5-2.0, 512x512 crops, batch 8, SGD lr 0.01 (200 warm-up steps), 8,000 steps; every
value is a key (`--config.data.crop_size=(384,384)`, `--config.total_steps=4000`,
`--config.model.name=bisenetv1_r50`, `bisenetv2` or `fastscnn`: any network). The class count
comes from classes.txt. Fine-tune the official Cityscapes weights to your classes with
`--config.init.checkpoint=fcn_bisenetv1_resnet18os32_cityscapes.pth` (the heads' classifiers
are re-initialised). Otherwise BiSeNetV1's backbone starts from the network's official ImageNet
file (`config.init.backbone`, downloaded once into ~/.cache/bisenet_jax/imagenet/), or from
scratch with `--config.init.backbone=none`.
Folder names, the mask suffix and how mask values become classes are keys too
(`data.image_dir`, `data.mask_dir`, `data.mask_suffix`, `data.ignore_index`,
`data.reduce_zero_label`, `data.label_map`). See docs/custom_data.md; for rare classes, OHEM
(`--config.ohem.thresh=0.7`) and class weights in the loss table: docs/training_options.md.

':garden' is the worked example of docs/custom_data.md: the synthetic garden set written by
`python -m bisenet_jax.data.synthetic garden data/garden`, 120 steps of 192x192 crops, a few
minutes on a laptop CPU.
"""

from bisenet_jax.train import config


def get_config(arg=None):
  return config.get_config('bisenetv1_r18', arg, {'': config.small_data_config,
                                                  'garden': config.garden_config})
