"""Writes a synthetic demo dataset to a folder, or a short street clip to try videos on.

  python -m bisenet_jax.data.synthetic KIND OUTPUT
  python -m bisenet_jax.data.synthetic --video clip.mp4 [--size 256x512 --frames 40 --fps 15]
"""

import argparse
import math
from pathlib import Path

import numpy as np

from bisenet_jax import video
from bisenet_jax.cli import positive_int, size_argument, user_errors_exit
from bisenet_jax.data.synthetic import write_synthetic_cityscapes, write_synthetic_folder
from bisenet_jax.data.synthetic.clips import draw_street_clip
from bisenet_jax.errors import UserError

_MIN_SIDE = 32  # Smaller frames leave the scene's objects a pixel or two.


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.data.synthetic',
                                   description=__doc__.splitlines()[0],
                                   epilog='Sizes are HEIGHTxWIDTH.')
  parser.add_argument('kind', nargs='?', choices=['garden', 'street'],
                      help='garden: the folder layout, 5 classes of its own; street: the '
                      'Cityscapes layout')
  parser.add_argument('output', nargs='?', help='the dataset root to write (replaced if it exists)')
  parser.add_argument('--num-train', type=int, help='frames in the train split')
  parser.add_argument('--num-val', type=int, help='frames in the val split')
  parser.add_argument('--video', metavar='CLIP',
                      help='instead: write a street clip, a car driving into one scene, to CLIP '
                      '(.mp4: mp4v; .y4m: uncompressed YUV4MPEG2, e.g. for a browser\'s fake '
                      'camera)')
  parser.add_argument('--size', type=size_argument('--size'), default=(256, 512),
                      help='--video: the frame size, even sides (default 256x512)')
  parser.add_argument('--frames', type=positive_int('--frames'), default=40,
                      help='--video: how many frames (default 40)')
  parser.add_argument('--fps', type=float, default=15.0, help='--video: frame rate (default 15)')
  parser.add_argument('--seed', type=int, default=0, help='--video: which scene (default 0)')
  args = parser.parse_args(argv)
  given = [value for value in (args.kind, args.output) if value is not None]
  if len(given) != (0 if args.video else 2):
    raise UserError('give KIND OUTPUT to write a dataset, or --video CLIP to write a clip')
  if args.video is not None:
    _check_clip(args.size, args.fps)
  return args


def _check_clip(size, fps):
  if min(size) < _MIN_SIDE or size[0] % 2 or size[1] % 2:
    raise UserError(f'--size {size[0]}x{size[1]}: give even sides of at least {_MIN_SIDE} '
                    'pixels (video encoders subsample colour 2x2)')
  if not (math.isfinite(fps) and 0 < fps <= 240):
    raise UserError(f'--fps {fps:g}: give a frame rate above 0 and up to 240')


def write_clip(path: Path, size, frames: int, fps: float, seed: int) -> Path:
  """Writes the street clip to ``path`` whole, or nothing (it is renamed into place at the end)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  writer = video.open_writer(path, fps, size)
  kept = False
  try:
    for frame in draw_street_clip(np.random.default_rng(seed), *size, frames):
      writer.write(frame)
    kept = True
  finally:
    writer.close(kept)
  return path


@user_errors_exit
def main(argv=None):
  args = parse_args(argv)
  if args.video is not None:
    path = write_clip(Path(args.video), args.size, args.frames, args.fps, args.seed)
    print(f'wrote {path}: {args.frames} frames of {args.size[0]}x{args.size[1]} at '
          f'{args.fps:g} frames/s ({args.frames / args.fps:.1f} s)')
    return
  counts = {key: value for key, value in (('num_train', args.num_train),
                                          ('num_val', args.num_val)) if value is not None}
  write = write_synthetic_folder if args.kind == 'garden' else write_synthetic_cityscapes
  root = write(args.output, **counts)
  print(f'wrote the {args.kind} dataset to {root}')


if __name__ == '__main__':
  main()
