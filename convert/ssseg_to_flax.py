"""Converts an official sssegmentation .pth (any network of the registry) into a Flax checkpoint.

  python convert/ssseg_to_flax.py --input fcn_bisenetv1_resnet18os32_cityscapes.pth \
      --output checkpoints/bisenetv1_r18

The network (BiSeNetV1 R18/R50, BiSeNetV2, Fast-SCNN), stem and class count are read from the
tensors; ``--arch`` forces a network. The conversion is strict: every missing, unexpected or
mis-shaped key is listed and nothing is written. A file with ``model_ema`` (sssegmentation
trained with EMA) gives a checkpoint that keeps both, as a training run does (``--no-ema``
leaves the EMA out, ``--ema`` requires it). The output loads with
``bisenet_jax.load_pretrained(OUTPUT)``.
"""

import argparse

from bisenet_jax import checkpoint
from bisenet_jax.cli import add_ema_argument, user_errors_exit
from bisenet_jax.interop import ssseg, torch_files
from bisenet_jax.specs import NETWORKS


@user_errors_exit
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='official .pth (training or published)')
  parser.add_argument('--output', required=True, help='folder to create (must not exist)')
  parser.add_argument('--arch', choices=list(NETWORKS), help='force a network')
  add_ema_argument(parser)
  args = parser.parse_args(argv)
  source = torch_files.open_file(args.input)  # Unpickled once for every reader below.
  spec, variables = ssseg.load_official_checkpoint(source, args.arch, ema=False)
  ema = None
  if args.ema or (args.ema is None and torch_files.has_entry(source, 'model_ema')):
    ema = ssseg.load_official_checkpoint(source, args.arch, ema=True)[1]
  path = checkpoint.save_model(args.output, variables, spec,
                               checkpoint.read_dataset(source, spec.num_classes), ema=ema)
  stem = f', {spec.stem} stem' if spec.stem else ''
  print(f'converted {args.input} ({spec.name}, {spec.num_classes} classes{stem}'
        f'{", with its model_ema" if ema is not None else ""}) -> {path}')


if __name__ == '__main__':
  main()
