"""Exports Flax variables as a .pth that sssegmentation loads with strict=True.

  python convert/flax_to_ssseg.py --input workdir/ --output bisenetv1_r18_jax.pth

``--input`` is a converted model checkpoint, a training step folder or a training workdir
(its latest checkpoint). The output is ``{'model': state_dict}`` in the reference layout,
including each BatchNorm's ``num_batches_tracked``, with ``model_ema`` beside it when the
checkpoint keeps an EMA (sssegmentation's ``test.py --ema`` loads that one).
"""

import argparse

from bisenet_jax import checkpoint
from bisenet_jax.cli import user_errors_exit


@user_errors_exit
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', required=True, help='model checkpoint or training workdir')
  parser.add_argument('--output', required=True, help='.pth file to write')
  parser.add_argument('--num-batches-tracked', type=int, default=0,
                      help="value of every BN's num_batches_tracked counter (train steps seen)")
  args = parser.parse_args(argv)
  path = checkpoint.export_official_checkpoint(args.input, args.output, args.num_batches_tracked)
  print(f'exported {args.input} -> {path}')


if __name__ == '__main__':
  main()
