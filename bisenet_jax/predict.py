"""Segments images of any size and writes masks in the classes' colours (and overlays).

  python -m bisenet_jax.predict --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth \
      street.jpg photos/ --output masks/ --overlay

INPUTs are image files or folders (searched recursively for *.jpg, *.jpeg, *.png). For each
image ``<stem>.<ext>`` the output folder receives ``<stem>_mask.png`` (every pixel in the
colour of its predicted class) and, with ``--overlay``, ``<stem>_overlay.png`` (the image and
the mask blended 50/50); images found in a folder keep their sub-folder path below it.
``legend.png`` names the colours. The classes and their colours are the checkpoint's (a model
trained here records them; official checkpoints are Cityscapes'), or ``--dataset`` /
``--classes``'.

Each image is normalised as in evaluation (on the device) but NOT resized: the model
sees it at its own size, so objects should appear at roughly the training data's scale (for
Cityscapes models, a 1024x2048 street frame) for good results; ``--scales`` runs it at other
sizes too, ``--input-size HEIGHTxWIDTH`` at one fixed size. Inference is the shared, jitted
``evaluator.make_segment_fn`` on one device with the same flags as ``bisenet_jax.evaluate``; it
compiles once per distinct image size.

``--checkpoint model.onnx`` runs a file from ``python -m bisenet_jax.export --outputs labels``
on ONNX Runtime instead, without JAX: whole images of the exported size, classes and colours
from the file's metadata (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from bisenet_jax import cli
from bisenet_jax.data.images import IMAGE_SUFFIXES, read_image
from bisenet_jax.errors import UserError

LEGEND_NAME = 'legend.png'


def find_images(inputs: list[str]) -> list[tuple[Path, Path]]:
  """``(image file, output stem relative to the output folder)`` for every input image.

  A file is taken whatever its extension (decoding decides); a folder contributes its images
  below it, in sorted order, keeping their sub-folders so equal names in different places do
  not collide.
  """
  found = []
  for text in inputs:
    path = Path(text)
    if path.is_file():
      found.append((path, Path(path.stem)))
    elif path.is_dir():
      images = sorted(p for p in path.rglob('*')
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
      if not images:
        raise UserError(f'No {", ".join("*" + suffix for suffix in IMAGE_SUFFIXES)} files under '
                        f'{path}')
      found.extend((p, p.relative_to(path).with_suffix('')) for p in images)
    else:
      raise UserError(f'Input {path} does not exist')
  _check_unique(found)
  return found


def _check_unique(found: list[tuple[Path, Path]]) -> None:
  owners = {}
  for image, stem in found:
    if stem in owners and owners[stem] != image:
      raise UserError(f'{owners[stem]} and {image} would both be written as {stem}_mask.png: '
                      'predict them into different --output folders')
    owners[stem] = image


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """uint8 [H, W] class indices -> uint8 [H, W, 3] RGB colours from ``palette`` [K, 3]."""
  return palette[labels]


def blend(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The image and its colour mask mixed 50/50 (uint8 RGB)."""
  return cv2.addWeighted(image, 0.5, mask, 0.5, 0.0)


def draw_legend(classes, swatch: int = 24) -> np.ndarray:
  """uint8 RGB image: one row per class, a colour swatch followed by the index and name."""
  width = swatch + 60 + 9 * max(len(name) for name in classes.names)
  legend = np.full((swatch * classes.num_classes, width, 3), 255, np.uint8)
  for index, (name, colour) in enumerate(zip(classes.names, classes.palette)):
    top = index * swatch
    legend[top + 2:top + swatch - 2, 4:4 + swatch] = colour
    cv2.putText(legend, f'{index:2d} {name}', (swatch + 12, top + swatch - 7),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  return legend


def write_rgb(path: Path, image: np.ndarray) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  except OSError:
    written = False
  if not written:
    raise UserError(f'Cannot write {path}: check that --output is a writable folder')


def predictor(model, variables, spec):
  """``uint8 [H, W, 3] RGB image -> uint8 [H, W] class indices`` through the shared inference."""
  import jax

  from bisenet_jax.eval import evaluator
  segment = evaluator.make_segment_fn(model, spec)
  variables = jax.device_put(variables, jax.devices()[0])

  def predict(image: np.ndarray) -> np.ndarray:
    # Full fp32 as in evaluation (the reference runs with TF32 off).
    with jax.default_matmul_precision('highest'):
      return np.asarray(segment(variables, image[None], out_size=image.shape[:2]))[0]

  return predict


def jax_predictor(args: argparse.Namespace, spec):
  """``(predict, dataset)`` for a checkpoint, on one device."""
  from bisenet_jax import checkpoint, evaluate, parallel
  parallel.setup('no')  # One device, one process.
  model, variables, recorded = checkpoint.load_model(args.checkpoint)
  dataset = cli.dataset_spec(args, recorded, root=None)
  evaluate.check_classes(args.checkpoint, model, dataset)
  return predictor(model.build(), variables, spec), dataset


def onnx_predictor(args: argparse.Namespace, spec):
  """``(predict, dataset)`` for an exported .onnx on ONNX Runtime: no JAX imported."""
  from bisenet_jax.export.onnx_runtime import OnnxSegmenter
  if not spec.is_plain:
    raise UserError('an .onnx model runs whole images at scale 1 only: drop --mode, --flip and '
                    '--scales, or predict with the checkpoint it was exported from')
  segmenter = OnnxSegmenter(args.checkpoint)
  dataset = cli.dataset_spec(args, segmenter.dataset, root=None)
  if dataset.classes.num_classes != segmenter.interface.num_classes:
    raise UserError(f'{args.checkpoint} has {segmenter.interface.num_classes} classes, the '
                    f'dataset {dataset.classes.num_classes}: pass the matching --dataset / '
                    '--classes')
  return (lambda image: segmenter.labels(image[None])[0]), dataset


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.predict',
                                   description=__doc__.splitlines()[0],
                                   epilog='Sizes are HEIGHTxWIDTH.')
  parser.add_argument('inputs', nargs='+', metavar='INPUT',
                      help='image files, or folders searched recursively for .jpg/.jpeg/.png')
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, a training '
                      'workdir (its latest checkpoint), or an .onnx from bisenet_jax.export '
                      '--outputs labels')
  parser.add_argument('--output', required=True, help='folder for the masks (created if needed)')
  parser.add_argument('--overlay', action='store_true',
                      help='also write <stem>_overlay.png, the image blended with its mask')
  cli.add_dataset_arguments(parser, layout=False)
  cli.add_inference_arguments(parser)
  return parser.parse_args(argv)


@cli.user_errors_exit
def main(argv=None) -> None:
  args = parse_args(argv)
  spec = cli.inference_spec(args)
  images = find_images(args.inputs)
  onnx = Path(args.checkpoint).suffix.lower() == '.onnx'
  predict, info = onnx_predictor(args, spec) if onnx else jax_predictor(args, spec)

  output = Path(args.output)
  write_rgb(output / LEGEND_NAME, draw_legend(info.classes))
  bar = tqdm(images, unit='image', desc='predict', leave=False, disable=not sys.stderr.isatty())
  for path, stem in bar:
    image = read_image(path, 'replace the file or leave it out')
    mask = colorize(predict(image), info.classes.palette)
    write_rgb(output / f'{stem}_mask.png', mask)
    if args.overlay:
      write_rgb(output / f'{stem}_overlay.png', blend(image, mask))
  print(f'wrote {len(images)} mask(s){" and overlays" if args.overlay else ""} and '
        f'{LEGEND_NAME} to {output}')


if __name__ == '__main__':
  main()
