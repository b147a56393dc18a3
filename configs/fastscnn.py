"""DepthwiseSeparableFCN + Fast-SCNN, Cityscapes: sssegmentation's recipe, trained from scratch,
71.53% val mIoU.

Reference recipe (docs/reference.md §11.3): 32 crops of 512x1024 per step over all devices
(frames resized to fit 1024x2048 at a random scale in 0.5-2.0, as for BiSeNetV1), SGD lr 0.12
poly (power 0.9, min 1e-4) without warm-up, momentum 0.9, weight decay 4e-5, 162,750 steps
(1,750 epochs of 93), SyncBN, sigmoid cross-entropy on the main head (weight 1) and on two
auxiliary heads (weight 0.4):

  python train.py --config configs/fastscnn.py --workdir runs/fastscnn \\
      --config.data.root=/data/cityscapes

It should reach about 71.5% mIoU on Cityscapes val (single scale, full resolution); the
official weights are depthwiseseparablefcn_fastscnn_cityscapes.pth.

Embedded demo (synthetic street scenes, written once under ~/.cache/bisenet_jax), a few minutes
on a laptop CPU:

  python train.py --config configs/fastscnn.py:demo
"""

from bisenet_jax.train import config


def fastscnn_config(arch):
  recipe = config.reference_config(arch)
  epoch = config.iterations_per_epoch(32)
  recipe.batch_size = 32
  recipe.batch_per_replica = 4  # 8 GPUs x 4.
  recipe.data.crop_size = (512, 1024)
  recipe.total_steps = 1750 * epoch
  recipe.optimizer.update(base_lr=0.12, weight_decay=4e-5, warmup_steps=0)
  recipe.checkpoint_every_steps = epoch
  recipe.eval_every_steps = 10 * epoch
  return recipe


def demo_config(arch):
  """The embedded demo with the recipe's optimizer; Fast-SCNN, from scratch and ten times
  cheaper per step than BiSeNetV1, takes 480 steps to pass 50% (49.8% after 240, 55.5% after
  480)."""
  demo = config.demo_config(arch, recipe=fastscnn_config)
  demo.total_steps = 480
  demo.checkpoint_every_steps = 80
  demo.eval_every_steps = 240
  return demo


def get_config(arg=None):
  return config.get_config('fastscnn', arg, {'': fastscnn_config, 'demo': demo_config})
