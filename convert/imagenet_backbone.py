"""Checks an ImageNet ResNet file against a model's backbone and reports the match.

  python convert/imagenet_backbone.py --input resnet18_v1c-b5776b93.pth --arch bisenetv1_r18

Training uses the same import through ``--config.init.backbone=FILE``; this script lets you
check a file first. OpenMMLab v1c files (deep stem) fit the default model; torchvision files
(7x7 stem) need ``--stem classic``.
"""

import argparse

from bisenet_jax import models
from bisenet_jax.cli import user_errors_exit
from bisenet_jax.interop import imagenet
from bisenet_jax.specs import NETWORKS, ModelSpec


@user_errors_exit
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='ImageNet ResNet .pth')
  parser.add_argument('--arch', default='bisenetv1_r18',
                      choices=[name for name, net in NETWORKS.items() if net.imagenet_backbone],
                      help='a network with an ImageNet ResNet backbone')
  parser.add_argument('--stem', choices=['deep', 'classic'], default='deep')
  args = parser.parse_args(argv)
  spec = ModelSpec(args.arch, 19, stem=args.stem)
  variables = models.abstract_variables(models.build(spec))
  _, report = imagenet.load_backbone(args.input, variables, spec)
  print(f'{args.input}: {report}')


if __name__ == '__main__':
  main()
