"""Converts an official sssegmentation FCN-BiSeNetV1 .pth into a Flax model checkpoint.

  python convert/ssseg_to_flax.py --input fcn_bisenetv1_resnet18os32_cityscapes.pth \
      --output checkpoints/bisenetv1_r18

The architecture (R18/R50), stem and class count are read from the tensor shapes; ``--arch``
forces one. The conversion is strict: every missing, unexpected or mis-shaped key is listed and
nothing is written. The output loads with ``bisenet_jax.load_pretrained(OUTPUT)``.
"""

import argparse

from bisenet_jax import checkpoint
from bisenet_jax.cli import user_errors_exit
from bisenet_jax.interop import ssseg


@user_errors_exit
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='official .pth (training or published)')
  parser.add_argument('--output', required=True, help='folder to create (must not exist)')
  parser.add_argument('--arch', choices=['r18', 'r50'], help='force an architecture')
  args = parser.parse_args(argv)
  spec, variables = ssseg.load_official_checkpoint(args.input, args.arch)
  path = checkpoint.save_model(args.output, variables, spec,
                               checkpoint.read_dataset(args.input, spec.num_classes))
  print(f'converted {args.input} ({spec.name}, {spec.num_classes} classes, {spec.stem} stem) '
        f'-> {path}')


if __name__ == '__main__':
  main()
