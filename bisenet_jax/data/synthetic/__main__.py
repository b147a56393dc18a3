"""Writes a synthetic demo dataset to a folder: python -m bisenet_jax.data.synthetic KIND OUTPUT."""

import argparse

from bisenet_jax.cli import user_errors_exit
from bisenet_jax.data.synthetic import write_synthetic_cityscapes, write_synthetic_folder


@user_errors_exit
def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.data.synthetic',
                                   description='Writes a synthetic demo dataset to a folder.')
  parser.add_argument('kind', choices=['garden', 'street'],
                      help='garden: the folder layout, 5 classes of its own; street: the '
                      'Cityscapes layout')
  parser.add_argument('output', help='the dataset root to write (replaced if it exists)')
  parser.add_argument('--num-train', type=int, help='frames in the train split')
  parser.add_argument('--num-val', type=int, help='frames in the val split')
  args = parser.parse_args(argv)
  counts = {key: value for key, value in (('num_train', args.num_train),
                                          ('num_val', args.num_val)) if value is not None}
  write = write_synthetic_folder if args.kind == 'garden' else write_synthetic_cityscapes
  root = write(args.output, **counts)
  print(f'wrote the {args.kind} dataset to {root}')


if __name__ == '__main__':
  main()
