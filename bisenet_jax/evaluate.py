"""Evaluates a checkpoint on Cityscapes: per-class IoU, mIoU and pixel accuracy.

  python -m bisenet_jax.evaluate --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth \
      --data-root /data/cityscapes --output results.json

The defaults are the reference protocol (REFERENCE.md §6): the val split, each image whole at
full resolution, the stride-8 logits upsampled bilinearly to the label size, argmax, one
confusion matrix over the whole split (19 classes, ignored pixels dropped) and mIoU as the mean
of the defined class IoUs. ``--mode slide``, ``--flip`` and ``--scales`` switch to sliding
windows and test-time augmentation. The checkpoint may be an official ``.pth`` (converted in
memory; needs torch), a folder written by ``convert/ssseg_to_flax.py`` or a training workdir;
the architecture comes from the checkpoint.

The split is sharded over every device (``--batch-size`` images per device per step). With
``--output`` the scores go to a JSON file, written only once evaluation has succeeded.
``--save-predictions DIR`` writes one labelId PNG per image as the official cityscapesscripts
evaluation and the test server expect. Sizes on the command line are WIDTHxHEIGHT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import jax
import numpy as np

from bisenet_jax import checkpoint, parallel
from bisenet_jax.cli import add_distributed_argument, user_errors_exit
from bisenet_jax.data import cityscapes, folder, sources
from bisenet_jax.errors import UserError
from bisenet_jax.eval import evaluator, metrics
from bisenet_jax.eval.options import (
    add_dataset_arguments, add_inference_arguments, dataset_info, parse_scales, parse_size,
    height_width)

# Predictions are named after their input image, as the test server asks; the official
# evaluation finds them by globbing '<city>_<seq>_<frame>*.png', which that name matches.
PREDICTION_SUFFIX = '_leftImg8bit.png'
DATASET_NAMES = {'cityscapes': 'Cityscapes', 'folder': 'the folder dataset',
                 'voc': 'Pascal VOC', 'ade20k': 'ADE20K'}


def inference_options(args: argparse.Namespace) -> evaluator.InferenceOptions:
  """Validates the inference flags; ``InferenceOptions`` takes sizes as (height, width)."""
  if args.mode == 'slide' and not (args.crop and args.stride):
    raise UserError('--mode slide needs --crop and --stride, '
                    'e.g. --crop 1024x1024 --stride 768x768')
  if args.mode == 'whole' and (args.crop or args.stride):
    raise UserError('--crop and --stride only apply to --mode slide')
  crop, stride = height_width(args.crop, '--crop'), height_width(args.stride, '--stride')
  if crop and (stride[0] > crop[0] or stride[1] > crop[1]):
    raise UserError(f'--stride {args.stride} is larger than --crop {args.crop}: '
                    'the windows would leave pixels uncovered')
  return evaluator.InferenceOptions(mode=args.mode, crop_size=crop, stride=stride,
                                    flip=args.flip, scales=parse_scales(args.scales))


def load_model_for(path: str, args: argparse.Namespace, root: str | None):
  """``(model, variables, dataset)``: the checkpoint and the dataset it is used on, which must
  have as many classes as the model predicts."""
  model, variables = checkpoint.load_pretrained(path)
  info = dataset_info(args, checkpoint.read_dataset(path, model.num_classes), root)
  if model.num_classes != info.classes.num_classes:
    raise UserError(f'checkpoint {path} has {model.num_classes} classes, '
                    f'{DATASET_NAMES[info.kind]} has {info.classes.num_classes}: use a checkpoint '
                    'trained for these classes, or pass the matching --dataset / --classes')
  return model, variables, info


def prediction_writer(directory: Path, info: sources.DatasetInfo
                      ) -> Callable[[dict, np.ndarray], None]:
  """An ``on_batch`` hook writing one PNG per image below ``directory``.

  Cityscapes: ``<city>/<city>_<seq>_<frame>_leftImg8bit.png``, single-channel uint8 labelIds
  (the 19 trainIds mapped back with ``TRAIN_ID_TO_LABEL_ID``), which is what cityscapesscripts'
  evaluation and the test server read. Other datasets: ``<name>.png``, a palette PNG of class
  indices coloured with the classes' colours (viewers show colours, readers get indices).
  """

  def write(batch: dict, predictions: np.ndarray) -> None:
    names = [name for name, valid in zip(batch['name'], batch['valid']) if valid]
    for name, labels in zip(names, predictions):
      if info.kind == 'cityscapes':
        path = directory / f'{name}{PREDICTION_SUFFIX}'
      else:
        path = directory / f'{name}.png'
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if info.kind == 'cityscapes':
          written = cv2.imwrite(str(path), cityscapes.TRAIN_ID_TO_LABEL_ID[labels])
        else:
          folder.write_index_png(path, labels, info.classes.palette)
          written = True
      except OSError:
        written = False
      if not written:
        raise UserError(f'Cannot write {path}: check that the folder is writable')

  return write


class SteadyThroughput:
  """An ``on_batch`` hook timing every batch after the first, i.e. without compilation."""

  def __init__(self):
    self.first_done, self.images = None, 0

  def __call__(self, batch: dict, predictions: np.ndarray) -> None:
    if self.first_done is None:
      self.first_done = time.perf_counter()
    else:
      self.images += len(predictions) * jax.process_count()

  def images_per_second(self) -> float | None:
    """None when there was a single batch (nothing to time after the compilation)."""
    if not self.images:
      return None
    return self.images / (time.perf_counter() - self.first_done)


def results_record(scores: dict, args: argparse.Namespace, options: evaluator.InferenceOptions,
                   info: sources.DatasetInfo) -> dict:
  """The JSON content: scores as fractions (NaN -> null), the protocol and the run's size."""
  return {
      'miou': _finite_or_none(scores['miou']),
      'iou': [_finite_or_none(v) for v in scores['iou']],
      'class_names': list(info.classes.names),
      'aacc': _finite_or_none(scores['aacc']),
      'protocol': {
          'mode': args.mode, 'crop': args.crop, 'stride': args.stride, 'flip': args.flip,
          'scales': list(options.scales), 'base_size': list(info.base_size),
          'split': args.split, 'dataset': info.kind,
      },
      'checkpoint': str(Path(args.checkpoint).absolute()),
      'images': scores['images'],
      'seconds': scores['seconds'],
      # Rows are ground truth, columns predictions: lets runs be compared or merged exactly.
      'confusion': scores['confusion'].tolist(),
  }


def _finite_or_none(value: float) -> float | None:
  return None if math.isnan(value) else float(value)


def write_json_atomically(path: Path, content: dict) -> None:
  """Writes a temporary file next to ``path`` and renames it: never a partial file."""
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    try:
      with open(temporary, 'w') as f:
        json.dump(content, f, indent=2)
        f.write('\n')
      os.replace(temporary, path)
    finally:
      temporary.unlink(missing_ok=True)
  except OSError as e:
    raise UserError(f'Cannot write {path} ({e.strerror}): choose a writable --output') from e


def _prepare_output(path: str | None) -> Path | None:
  """Checks the results path before the (long) evaluation, creating its folder."""
  if path is None:
    return None
  path = Path(path)
  if path.is_dir():
    raise UserError(f'--output {path} is a folder: give a file name, e.g. {path}/results.json')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f'Cannot create {path.parent} ({e.strerror}): choose another --output') from e
  return path


def _timing_line(scores: dict, steady: float | None) -> str:
  line = f"{scores['images']} images in {scores['seconds']:.1f} s"
  if steady is not None:
    line += f', {steady:.2f} img/s after the first batch (which includes compilation)'
  return line


def describe_protocol(args: argparse.Namespace, info: sources.DatasetInfo, devices: int) -> str:
  mode = ('whole image' if args.mode == 'whole'
          else f'sliding {args.crop} windows, stride {args.stride}')
  return (f'protocol: {mode}, scales {args.scales}, flip {"on" if args.flip else "off"}, '
          f'base size {info.base_size[0]}x{info.base_size[1]}, {info.kind} split {args.split}, '
          f'{args.batch_size} image(s) per device on {devices} device(s)')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m bisenet_jax.evaluate', description=__doc__.splitlines()[0],
      epilog='Sizes are WIDTHxHEIGHT. Without inference flags this is the reference protocol.')
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, or a training '
                      'workdir (its latest checkpoint)')
  parser.add_argument('--data-root', required=True,
                      help='the dataset root (Cityscapes: the folder holding leftImg8bit/ and '
                      'gtFine/)')
  parser.add_argument('--split', default='val', help='split to evaluate (default: val)')
  parser.add_argument('--batch-size', type=int, default=1,
                      help='images per device per step (default: 1, as the reference)')
  parser.add_argument('--base-size', metavar='WxH',
                      help='target of the reference test Resize (keeps the aspect ratio; a '
                      "no-op for 2048x1024 Cityscapes frames). Default: the training recipe's, "
                      'else 2048x1024')
  parser.add_argument('--output', metavar='FILE',
                      help='write the scores, protocol and confusion matrix to this JSON file')
  parser.add_argument('--save-predictions', metavar='DIR',
                      help='write one PNG per image: Cityscapes labelId maps '
                      '(<city>/<city>_<seq>_<frame>_leftImg8bit.png) for cityscapesscripts or '
                      'the test server; palette PNGs of class indices for other datasets')
  add_dataset_arguments(parser)
  add_inference_arguments(parser)
  add_distributed_argument(parser)
  return parser.parse_args(argv)


@user_errors_exit
def main(argv=None) -> dict:
  args = parse_args(argv)
  parallel.setup(args.distributed)
  options = inference_options(args)
  if args.batch_size <= 0:
    raise UserError(f'--batch-size {args.batch_size} must be positive')
  output = _prepare_output(args.output)
  model, variables, info = load_model_for(args.checkpoint, args, args.data_root)
  if args.base_size:
    info = dataclasses.replace(info, base_size=parse_size(args.base_size, '--base-size'))
  source = sources.open_split(info, args.data_root, args.split)
  mesh = parallel.make_mesh()
  say = print if jax.process_index() == 0 else lambda *_: None  # One report per run.
  say(describe_protocol(args, info, mesh.size))
  throughput = SteadyThroughput()
  hooks = [throughput]
  if args.save_predictions:
    hooks.append(prediction_writer(Path(args.save_predictions), info))

  def on_batch(batch, labels):
    for hook in hooks:
      hook(batch, labels)

  # ssseg evaluates in full fp32 (TF32 off); GPUs would otherwise use TF32 convolutions.
  with jax.default_matmul_precision('highest'):
    scores = evaluator.evaluate(model, variables, source, mesh=mesh, base_size=info.base_size,
                                options=options, batch_per_device=args.batch_size,
                                num_classes=model.num_classes, on_batch=on_batch,
                                progress=sys.stderr.isatty())  # No bar in logs.

  say(metrics.format_table(scores, info.classes.names))
  say(_timing_line(scores, throughput.images_per_second()))
  if output is not None and jax.process_index() == 0:  # One file, even on a shared disk.
    write_json_atomically(output, results_record(scores, args, options, info))
    say(f'wrote {output}')
  if args.save_predictions:
    say(f'wrote {scores["images"]} prediction(s) to {args.save_predictions}')
  return scores


if __name__ == '__main__':
  main()
