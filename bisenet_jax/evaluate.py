"""Evaluates a checkpoint on Cityscapes: per-class IoU, mIoU and pixel accuracy.

  python -m bisenet_jax.evaluate --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth \
      --data-root /data/cityscapes --output results.json

The defaults are the reference protocol (docs/reference.md §6): the val split, each image whole
at full resolution, the stride-8 logits upsampled bilinearly to the label size, argmax, one
confusion matrix over the whole split (19 classes, ignored pixels dropped) and mIoU as the mean
of the defined class IoUs. ``--mode slide``, ``--flip``, ``--scales`` and ``--input-size`` switch
to sliding windows, test-time augmentation or a fixed input size. The checkpoint may be an
official ``.pth`` (converted in memory; needs torch), a folder written by
``convert/ssseg_to_flax.py`` or a training workdir; the architecture comes from the checkpoint.
An ``.onnx`` from ``python -m bisenet_jax.export`` runs on ONNX Runtime with the same split,
protocol, table and JSON (each whole image once, through the same test resize: the file's
record, or ``--resize-to``), in one process and without JAX: this module imports JAX only to
evaluate a checkpoint.

The split is sharded over every device (``--batch-size`` images per device per step). With
``--output`` the scores go to a JSON file, written only once evaluation has succeeded.
``--save-predictions DIR`` writes one labelId PNG per image as the official cityscapesscripts
evaluation and the test server expect. ``--records DIR`` reads the split through decoded-frame
records kept in DIR (``data/records.py``: each image decoded once, on the first run). Sizes on
the command line are HEIGHTxWIDTH.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from bisenet_jax import cli
from bisenet_jax.data import cityscapes, masks, sources
from bisenet_jax.errors import UserError
from bisenet_jax.eval import host, metrics
from bisenet_jax.files import write_atomically
from bisenet_jax.specs import DatasetSpec, InferenceSpec, format_size

# Predictions are named after their input image, as the test server asks; the official
# evaluation finds them by globbing '<city>_<seq>_<frame>*.png', which that name matches.
PREDICTION_SUFFIX = '_leftImg8bit.png'
def prediction_writer(directory: Path, dataset: DatasetSpec
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
      if dataset.kind == 'cityscapes':
        path = directory / f'{name}{PREDICTION_SUFFIX}'
      else:
        path = directory / f'{name}.png'
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if dataset.kind == 'cityscapes':
          written = cv2.imwrite(str(path), cityscapes.TRAIN_ID_TO_LABEL_ID[labels])
        else:
          masks.write_index_png(path, labels, dataset.classes.palette)
          written = True
      except OSError:
        written = False
      if not written:
        raise UserError(f'Cannot write {path}: check that the folder is writable')

  return write


class SteadyThroughput:
  """An ``on_batch`` hook timing every batch after the first, i.e. without compilation.

  ``process_count``: the processes of the run, each predicting as many images per batch.
  """

  def __init__(self, process_count: int):
    self.process_count, self.first_done, self.images = process_count, None, 0

  def __call__(self, batch: dict, predictions: np.ndarray) -> None:
    if self.first_done is None:
      self.first_done = time.perf_counter()
    else:
      self.images += len(predictions) * self.process_count

  def images_per_second(self) -> float | None:
    """None when there was a single batch (nothing to time after the compilation)."""
    if not self.images:
      return None
    return self.images / (time.perf_counter() - self.first_done)


def results_record(scores: dict, args: argparse.Namespace, spec: InferenceSpec,
                   dataset: DatasetSpec, resize_to) -> dict:
  """The JSON content: scores as fractions (NaN -> null), the protocol and the run's size."""
  return {
      'miou': _finite_or_none(scores['miou']),
      'iou': [_finite_or_none(v) for v in scores['iou']],
      'class_names': list(dataset.classes.names),
      'aacc': _finite_or_none(scores['aacc']),
      'protocol': {**spec.to_json(), 'resize_to': None if resize_to is None else list(resize_to),
                   'split': args.split, 'dataset': dataset.kind},
      'checkpoint': str(Path(args.checkpoint).absolute()),
      'images': scores['images'],
      'seconds': scores['seconds'],
      # Rows are ground truth, columns predictions: lets runs be compared or merged exactly.
      'confusion': scores['confusion'].tolist(),
  }


def _finite_or_none(value: float) -> float | None:
  return None if math.isnan(value) else float(value)


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


def describe_protocol(spec: InferenceSpec, dataset: DatasetSpec, resize_to, split: str,
                      where: str) -> str:
  resize = 'images as read' if resize_to is None else f'resize to {format_size(resize_to)}'
  return f'protocol: {spec.describe()}, {resize}, {dataset.kind} split {split}, {where}'


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """What a run evaluates, ready to go: ``run(on_batch)`` returns the scores. This process is
  ``process_index`` of the ``process_count`` sharing the work; process 0 reports."""
  dataset: DatasetSpec
  spec: InferenceSpec
  resize_to: tuple[int, int] | None  # None: each image as it was read.
  protocol: str
  run: Callable[[Callable], dict]
  process_index: int = 0
  process_count: int = 1


def is_exported(path: str) -> bool:
  return Path(path).suffix.lower() == '.onnx'


def checkpoint_evaluation(args: argparse.Namespace, spec: InferenceSpec) -> Evaluation:
  """A JAX checkpoint, sharded over every device of every process."""
  import jax  # Here, not above: an exported file is evaluated without JAX.

  from bisenet_jax import checkpoint, models, parallel
  from bisenet_jax.eval import evaluator
  parallel.setup(args.distributed)
  opened = checkpoint.open_checkpoint(args.checkpoint)
  model_spec, variables, recorded = checkpoint.load_model(opened, args.ema)
  ema = args.ema is not False and checkpoint.has_ema(opened)
  dataset = cli.dataset_spec(args, recorded, root=args.data_root)
  sources.check_classes(args.checkpoint, model_spec.num_classes, dataset)
  source = _open_source(args, dataset)
  mesh = parallel.make_mesh()

  def run(on_batch):  # In full float32, as the reference (make_segment_fn's precision).
    return evaluator.evaluate(models.build(model_spec), variables, source, mesh=mesh,
                              resize_to=dataset.resize_to, spec=spec,
                              batch_per_device=args.batch_size, on_batch=on_batch,
                              progress=sys.stderr.isatty())  # No bar in logs.

  where = f'{args.batch_size} image(s) per device on {mesh.size} device(s)'
  if ema:
    where = f'EMA weights, {where}'
  return Evaluation(dataset, spec, dataset.resize_to,
                    describe_protocol(spec, dataset, dataset.resize_to, args.split, where), run,
                    jax.process_index(), jax.process_count())


def exported_evaluation(args: argparse.Namespace, spec: InferenceSpec) -> Evaluation:
  """An exported ``.onnx`` on ONNX Runtime: each whole image once, through the checkpoint's
  test resize (``Segmenter``; the dataset resolved as for a checkpoint: ``--resize-to``, else
  the file's record, else the kind's recipe's), in this one process (JAX, which connects
  processes, is not imported)."""
  if args.distributed == 'yes':
    raise UserError('an exported file is evaluated in one process, on ONNX Runtime: drop '
                    '--distributed yes')
  segmenter = cli.load_segmenter(args, spec, root=args.data_root)
  dataset = segmenter.dataset
  source = _open_source(args, dataset)
  spec = dataclasses.replace(spec, input_size=segmenter.backend.input_size)

  def run(on_batch):
    return host.evaluate_segmenter(segmenter, source, batch_size=args.batch_size,
                                   on_batch=on_batch, progress=sys.stderr.isatty())

  where = f'{segmenter.backend.description}, {args.batch_size} image(s) per batch'
  return Evaluation(dataset, spec, segmenter.resize_to,
                    describe_protocol(spec, dataset, segmenter.resize_to, args.split, where), run)


def _open_source(args: argparse.Namespace, dataset: DatasetSpec):
  """The split to evaluate, read through decoded-frame records with ``--records``."""
  source = sources.open_split(dataset, args.data_root, args.split)
  records = None if (args.records or 'none').lower() == 'none' else args.records
  return sources.with_records(source, records, flag='--records', log=print)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m bisenet_jax.evaluate', description=__doc__.splitlines()[0],
      epilog='Sizes are HEIGHTxWIDTH. Without inference flags this is the reference protocol.')
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, a training '
                      'workdir (its latest checkpoint), or an .onnx from bisenet_jax.export')
  parser.add_argument('--data-root', required=True,
                      help='the dataset root (Cityscapes: the folder holding leftImg8bit/ and '
                      'gtFine/)')
  parser.add_argument('--split', default='val', help='split to evaluate (default: val)')
  parser.add_argument('--batch-size', type=cli.positive_int('--batch-size'), default=1,
                      help='images per device per step (default: 1, as the reference)')
  parser.add_argument('--output', metavar='FILE',
                      help='write the scores, protocol and confusion matrix to this JSON file')
  parser.add_argument('--save-predictions', metavar='DIR',
                      help='write one PNG per image: Cityscapes labelId maps '
                      '(<city>/<city>_<seq>_<frame>_leftImg8bit.png) for cityscapesscripts or '
                      'the test server; palette PNGs of class indices for other datasets')
  parser.add_argument('--records', metavar='DIR',
                      help='read the split through decoded-frame records kept in DIR (each image '
                      'decoded once, on the first run; e.g. the training cache, '
                      '~/.cache/bisenet_jax/records); default: decode the files')
  cli.add_ema_argument(parser)
  cli.add_dataset_arguments(parser)
  cli.add_inference_arguments(parser)
  cli.add_distributed_argument(parser)
  return parser.parse_args(argv)


@cli.user_errors_exit
def main(argv=None) -> dict:
  args = parse_args(argv)
  spec = cli.inference_spec(args)
  output = _prepare_output(args.output)
  evaluation = (exported_evaluation if is_exported(args.checkpoint)
                else checkpoint_evaluation)(args, spec)
  reporting = evaluation.process_index == 0  # One report, and one file, per run.
  say = print if reporting else lambda *_: None
  say(evaluation.protocol)
  throughput = SteadyThroughput(evaluation.process_count)
  hooks = [throughput]
  if args.save_predictions:
    hooks.append(prediction_writer(Path(args.save_predictions), evaluation.dataset))

  def on_batch(batch, labels):
    for hook in hooks:
      hook(batch, labels)

  scores = evaluation.run(on_batch)
  say(metrics.format_table(scores, evaluation.dataset.classes.names))
  say(_timing_line(scores, throughput.images_per_second()))
  if output is not None and reporting:
    record = results_record(scores, args, evaluation.spec, evaluation.dataset,
                            evaluation.resize_to)
    write_atomically(output, json.dumps(record, indent=2) + '\n',
                     remedy='choose a writable --output')
    say(f'wrote {output}')
  if args.save_predictions:
    say(f'wrote {scores["images"]} prediction(s) to {args.save_predictions}')
  return scores


if __name__ == '__main__':
  main()
