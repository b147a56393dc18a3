"""Checks an ImageNet ResNet file against a model's backbone and reports the match.

  python convert/imagenet_backbone.py --input resnet18_v1c-b5776b93.pth --arch r18

Training uses the same import through ``--config.init.backbone=FILE``; this script lets you
check a file first. OpenMMLab v1c files (deep stem) fit the default model; torchvision files
(7x7 stem) need ``--stem classic``.
"""

import argparse

from bisenet_jax import models
from bisenet_jax.cli import user_errors_exit
from bisenet_jax.interop import imagenet, ssseg
from bisenet_jax.specs import ModelSpec


@user_errors_exit
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='ImageNet ResNet .pth')
  parser.add_argument('--arch', choices=['r18', 'r50'], default='r18')
  parser.add_argument('--stem', choices=['deep', 'classic'], default='deep')
  args = parser.parse_args(argv)
  model = ModelSpec(ssseg.arch_name(args.arch), 19, stem=args.stem).build()
  variables = models.abstract_variables(model)
  _, report = imagenet.load_backbone(args.input, variables, args.stem)
  print(f'{args.input}: {report}')


if __name__ == '__main__':
  main()
