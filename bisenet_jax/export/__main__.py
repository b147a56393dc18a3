"""Exports a model to ONNX, StableHLO, or a Triton model repository.

  python -m bisenet_jax.export --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth \
      --format onnx --output r18.onnx
  python -m bisenet_jax.export --checkpoint runs/r18 --format onnx --dtype int8 \
      --calibration /data/cityscapes --outputs labels --with-preprocessing --output r18_int8.onnx
  python -m bisenet_jax.export --checkpoint runs/r18 --format triton-repository \
      --outputs labels --with-preprocessing --layout nhwc --output model_repository/

The default interface is what a PyTorch export of the model has: input ``images`` float32
[N, 3, H, W] RGB normalised as the reference does, output ``logits`` float32 [N, K, ceil(H/8),
ceil(W/8)]. An ONNX file takes any batch size and any image size and runs the network at the
size it is given, as the checkpoint does; with ``--input-size HEIGHTxWIDTH`` it runs it at that
size, resizing the images to it and its output back (one shape for TensorRT engines). A
StableHLO file takes exactly ``--input-size`` (default 1024x2048). Every file records the test
resize of the checkpoint's dataset (``Interface.resize_to``: images are resized to fit it,
keeping their aspect ratio, before the file, as the checkpoint is evaluated), an ``.onnx`` in
its metadata, a StableHLO file in ``<output>.json`` beside it. ``--layout nhwc``,
``--outputs labels`` (uint8
class ids at the input's size, as ``predict_labels``), ``--with-preprocessing`` (uint8 RGB input,
normalised in the graph) and ``--dtype float16|int8`` change it; int8 (ONNX) is calibrated on
``--calibration`` images. Before the file is written (to a temporary name, renamed once checked)
its labels are compared with the float32 JAX model's on the calibration images (or random ones
when none are given): the share that agree is printed, and an int8 file under
``--min-agreement`` is refused. ``--format triton-repository`` writes the same ONNX file into
``--output``, a Triton Inference Server model repository, with its ``config.pbtxt``
(``--triton-*``; ``export.triton``). See docs/deployment.md and docs/serving.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from bisenet_jax import cli
from bisenet_jax.data.images import read_image
from bisenet_jax.data.normalization import MEAN_RGB, STD_RGB
from bisenet_jax.errors import UserError
from bisenet_jax.export import (DTYPES, FORMATS, INPUT_NAME, LAYOUTS, ONNX_FORMATS, OUTPUTS,
                                RECORD_SUFFIX, Interface, calibration, describe,
                                protocol_resize_to, records, triton)
from bisenet_jax.files import write_atomically
from bisenet_jax.specs import SIZE_FORMAT, format_size

# An int8 file whose labels agree with float32 JAX's on fewer check pixels is refused. Measured on
# a trained R18 (docs/deployment.md): quantized convolutions agree on 99.86% (mIoU -0.01 points);
# quantizing every operator, 96.42% (mIoU -3.2 points) is what this threshold refuses.
DEFAULT_MIN_AGREEMENT = 0.97
DEFAULT_CALIBRATION_COUNT = 100
_RANDOM_CHECK_IMAGES = 2
STABLEHLO_SIZE = (1024, 2048)
# Without calibration images a file taking any size is checked at two sizes, one that no
# stride divides.
_RANDOM_CHECK_SIZES = ((128, 256), (97, 203))


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.export',
                                   description=__doc__.splitlines()[0],
                                   epilog='Sizes are HEIGHTxWIDTH.')
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, or a training '
                      'workdir (its latest checkpoint)')
  parser.add_argument('--format', required=True, help=' or '.join(FORMATS))
  parser.add_argument('--output', required=True,
                      help='the file to write (triton-repository: the repository folder)')
  parser.add_argument('--input-size', type=cli.size_argument('--input-size'),
                      metavar=SIZE_FORMAT,
                      help='run the network at this fixed size: an ONNX file resizes other '
                      "images to it (default: each image's own size); the size a StableHLO file "
                      f'takes (default {format_size(STABLEHLO_SIZE)})')
  cli.add_renamed_flags(parser, {'--height': f'--input-size {SIZE_FORMAT}',
                                 '--width': f'--input-size {SIZE_FORMAT}'})
  parser.add_argument('--layout', default='nchw', help='nchw (default, as PyTorch) or nhwc')
  parser.add_argument('--outputs', default='logits',
                      help='logits (default; stride 8) or labels (uint8 class ids at the input '
                      'size, after the reference bilinear upsampling)')
  parser.add_argument('--with-preprocessing', action='store_true',
                      help='take uint8 RGB images and normalise them inside the graph')
  parser.add_argument('--dtype', default='float32',
                      help='float32 (default), float16, or int8 (ONNX: statically quantized '
                      'convolutions, needs --calibration)')
  parser.add_argument('--calibration', metavar='DIR',
                      help='images to calibrate int8 on and to check the file against: a folder '
                      'of images, a split or a dataset root (its training images)')
  parser.add_argument('--calibration-count', type=cli.positive_int('--calibration-count'),
                      default=DEFAULT_CALIBRATION_COUNT,
                      help=f'how many of them (default {DEFAULT_CALIBRATION_COUNT})')
  parser.add_argument('--min-agreement', type=float, default=DEFAULT_MIN_AGREEMENT,
                      help='refuse an int8 file whose labels agree with float32 JAX on fewer of '
                      f'the check pixels (default {DEFAULT_MIN_AGREEMENT})')
  parser.add_argument('--force', action='store_true', help='replace an existing --output')
  defaults = triton.TritonSpec()
  parser.add_argument('--triton-model-name',
                      help=f'triton-repository: the model folder (default {defaults.model_name})')
  parser.add_argument('--triton-max-batch-size', type=cli.positive_int('--triton-max-batch-size'),
                      help='triton-repository: the largest batch Triton forms (default '
                      f'{defaults.max_batch_size})')
  parser.add_argument('--triton-max-batch-delay-ms', type=float,
                      help='triton-repository: how long a request waits for others to batch '
                      f'with (default {defaults.max_queue_delay_ms:g})')
  parser.add_argument('--triton-instance-kind',
                      help='triton-repository: cpu (default, KIND_CPU) or gpu (KIND_GPU)')
  cli.add_ema_argument(parser)
  return parser.parse_args(argv)


def _choice(value: str, choices: tuple[str, ...], flag: str) -> str:
  if value not in choices:
    raise UserError(f'{flag} {value!r} is not one of {", ".join(choices)}')
  return value


@dataclasses.dataclass(frozen=True)
class ExportJob:
  """One export, checked at the edge (``job_from_args``) before the slow checkpoint load.

  Attributes:
    checkpoint: what ``checkpoint.load_model`` reads; ``ema``: its EMA choice (None: the default).
    format: 'onnx' or 'stablehlo'; output: the file to write.
    input_size: the size the network runs at, or None (ONNX: the image's own size).
    layout, outputs, preprocessing, dtype: the file's ``Interface`` (besides the classes).
    calibration: image files to calibrate int8 on and to check the file against, or None.
    min_agreement: an int8 file whose labels agree less with float32 JAX's is refused.
    triton: how Triton serves the file ('triton-repository'; None for the other formats).
    force: replace an existing output (the file is checked at the edge; a repository's model
      folder when it is written).
  """
  checkpoint: str
  ema: bool | None
  format: str
  output: Path
  input_size: tuple[int, int] | None
  layout: str
  outputs: str
  preprocessing: bool
  dtype: str
  calibration: tuple[Path, ...] | None
  min_agreement: float
  triton: triton.TritonSpec | None = None
  force: bool = False

  def interface(self, num_classes: int, resize_to: tuple[int, int]) -> Interface:
    """The file's interface; ``resize_to``: the checkpoint's test resize target."""
    height, width = self.input_size or (None, None)
    return Interface(height, width, num_classes, self.layout, self.outputs, self.preprocessing,
                     self.dtype, any_input_size=self.format in ONNX_FORMATS,
                     resize_to=resize_to)


def job_from_args(args: argparse.Namespace) -> ExportJob:
  """Every argument error before the (slow) checkpoint load and export."""
  _choice(args.format, FORMATS, '--format')
  _choice(args.layout, LAYOUTS, '--layout')
  _choice(args.outputs, OUTPUTS, '--outputs')
  _choice(args.dtype, DTYPES, '--dtype')
  if args.dtype == 'int8' and args.format not in ONNX_FORMATS:
    raise UserError('--dtype int8 is for --format onnx or triton-repository (ONNX Runtime '
                    'quantizes the file); StableHLO takes float32 or float16')
  if args.dtype == 'int8' and not args.calibration:
    raise UserError('--dtype int8 needs calibration images: pass --calibration DIR (a folder of '
                    'images, a split or a dataset root) like the images the model will see')
  if not 0 <= args.min_agreement <= 1:
    raise UserError(f'--min-agreement {args.min_agreement} must be a fraction in 0..1')
  output = Path(args.output)
  triton_spec = _triton_spec(args, output)
  if triton_spec is None:
    if output.is_dir():
      raise UserError(f'--output {output} is a folder: give a file name')
    for path in (output, record_path(output)) if args.format == 'stablehlo' else (output,):
      if path.exists() and not args.force:
        raise UserError(f'{path} already exists: pass --force to replace it')
  if not output.parent.is_dir():
    raise UserError(f'{output.parent} does not exist: create it first')
  if args.format in ONNX_FORMATS:  # The missing-extra message now, not after the slow load.
    from bisenet_jax.export import onnx_file, onnx_runtime
    onnx_file.require()
    onnx_runtime.require()  # The check of the written graph runs it.
  if args.dtype == 'float16' and args.format in ONNX_FORMATS:
    from bisenet_jax.export import precision
    precision.require_float16()
  images = (None if args.calibration is None else
            tuple(calibration.calibration_images(args.calibration, args.calibration_count)))
  input_size = args.input_size or (None if args.format in ONNX_FORMATS else STABLEHLO_SIZE)
  return ExportJob(args.checkpoint, args.ema, args.format, output, input_size, args.layout,
                   args.outputs, args.with_preprocessing, args.dtype, images, args.min_agreement,
                   triton_spec, args.force)


_TRITON_FLAGS = {'--triton-model-name': 'triton_model_name',
                 '--triton-max-batch-size': 'triton_max_batch_size',
                 '--triton-max-batch-delay-ms': 'triton_max_batch_delay_ms',
                 '--triton-instance-kind': 'triton_instance_kind'}


def _triton_spec(args: argparse.Namespace, output: Path) -> triton.TritonSpec | None:
  """The ``--triton-*`` flags of a triton-repository export (None for the other formats, which
  refuse them); its repository must be a folder, its model folder new unless ``--force``."""
  given = [flag for flag, key in _TRITON_FLAGS.items() if getattr(args, key) is not None]
  if args.format != 'triton-repository':
    if given:
      raise UserError(f'{given[0]} is for --format triton-repository: drop it')
    return None
  defaults = triton.TritonSpec()
  spec = triton.TritonSpec(
      triton.check_model_name(args.triton_model_name or defaults.model_name),
      args.triton_max_batch_size or defaults.max_batch_size,
      _delay(args.triton_max_batch_delay_ms, defaults.max_queue_delay_ms),
      _choice(args.triton_instance_kind or defaults.instance_kind, triton.INSTANCE_KINDS,
              '--triton-instance-kind'))
  if output.exists() and not output.is_dir():
    raise UserError(f'--output {output} is a file: give the model repository folder')
  folder = triton.model_folder(output, spec)
  if folder.exists() and not args.force:
    raise UserError(f'{folder} already exists: pass --force to replace it')
  return spec


def _delay(value: float | None, default: float) -> float:
  if value is None:
    return default
  if not 0 <= value <= 60_000:
    raise UserError(f'--triton-max-batch-delay-ms {value} must be 0..60000 milliseconds')
  return value


def export(job: ExportJob) -> dict:
  """Loads, exports, checks and writes; returns what the summary prints."""
  import jax

  from bisenet_jax import checkpoint, models
  from bisenet_jax.export import graph

  spec, variables, dataset = checkpoint.load_model(job.checkpoint, job.ema)
  model = models.build(spec)
  interface = job.interface(model.num_classes, protocol_resize_to(dataset))
  dataset_json = None if dataset is None else json.dumps(dataset.to_json())
  images = job.calibration
  check_images = _check_images(images, interface)
  with jax.default_matmul_precision('highest'):  # Full fp32, as the reference (no TF32).
    if job.format in ONNX_FORMATS:
      data = _onnx_file(model, variables, interface, dataset_json, check_images)
      run = _onnx_runner(data)
    else:
      from bisenet_jax.export import stablehlo_file
      data = stablehlo_file.export_stablehlo(graph.interface_fn(model, variables, interface),
                                             graph.input_spec(interface))
      run = _stablehlo_runner(data)
    # The reference: the float32 JAX model with the same interface.
    reference = jax.jit(graph.interface_fn(model, variables,
                                           dataclasses.replace(interface, dtype='float32')))
    check = compare(run, reference, check_images(), interface)
  check['images'] = f'{len(images)} calibration image(s)' if images else 'random images'
  if job.dtype == 'int8' and check['agreement'] < job.min_agreement:
    raise UserError(f"the int8 file's labels agree with float32 JAX's on {check['agreement']:.2%} "
                    f"of the pixels of {check['images']}, under --min-agreement "
                    f'{job.min_agreement:.2%}: nothing written; calibrate on more typical '
                    'images (--calibration, --calibration-count) or lower --min-agreement')
  names = None if dataset is None else dataset.classes.names
  if job.triton is None:
    written = write_atomically(job.output, data, remedy='choose another --output')
    if job.format == 'stablehlo':  # Its records, which the file itself cannot carry.
      write_atomically(record_path(job.output),
                       json.dumps({k: json.loads(v) for k, v in
                                   records(interface, dataset_json).items()}, indent=2) + '\n',
                       remedy='choose another --output')
  else:
    written = triton.write_repository(job.output, job.triton, data, interface, names,
                                      replace=job.force) / triton.VERSION / triton.MODEL_FILE
  return {'interface': interface, 'bytes': len(data), 'check': check, 'path': written,
          'labels': names is not None,
          'opset': _opset(data) if job.format in ONNX_FORMATS else None}


def _onnx_file(model, variables, interface: Interface, dataset_json: str | None,
               check_images) -> bytes:
  from bisenet_jax.export import onnx_file
  proto = onnx_file.build(model, variables, interface, check_images)
  return onnx_file.with_metadata(proto, interface, dataset_json).SerializeToString()


def record_path(output: Path) -> Path:
  """Where a StableHLO file's records go: ``<output>.json``."""
  return output.with_name(output.name + RECORD_SUFFIX)


def _check_images(files: list[Path] | None, interface: Interface):
  """A function returning the check (and calibration) inputs, one image per batch, as the file
  takes them: the calibration images (resized to the fixed size of a StableHLO file), or random
  ones (at the fixed size, and one of another size for an ONNX file; at two sizes for a file
  running at the image's own size)."""

  def images():
    if files:
      for path in files:
        image = read_image(path, 'replace it or leave it out of --calibration')
        if not interface.any_input_size:
          image = _resized(image, interface.input_size)
        yield image
      return
    rng = np.random.default_rng(0)
    if interface.input_size is None:
      sizes = list(_RANDOM_CHECK_SIZES)
    else:
      sizes = [interface.input_size] * _RANDOM_CHECK_IMAGES
      if interface.any_input_size:
        sizes.append(tuple(max(1, 3 * side // 4) for side in interface.input_size))
    for size in sizes:
      yield rng.integers(0, 256, (*size, 3), np.uint8)

  return lambda: (interface.prepare(image[None]) for image in images())


def _resized(image: np.ndarray, size) -> np.ndarray:
  import cv2
  return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def compare(run, reference, inputs, interface: Interface) -> dict:
  """How the file's output agrees with the float32 JAX reference's over ``inputs``.

  Returns ``{'agreement': share of equal labels (logits: of equal argmax), 'logits_error': max
  |file - JAX| over max |JAX| (logits files; None for labels)}``.
  """
  equal = total = 0
  error = scale = 0.0
  for batch in inputs:
    got, expected = np.asarray(run(batch)), np.asarray(reference(batch))
    if interface.outputs == 'logits':
      axis = 1 if interface.layout == 'nchw' else -1
      error = max(error, float(np.abs(got.astype(np.float64) - expected).max()))
      scale = max(scale, float(np.abs(expected).max()))
      got, expected = got.argmax(axis), expected.argmax(axis)
    equal += int(np.sum(got == expected))
    total += got.size
  return {'agreement': equal / total,
          'logits_error': error / scale if interface.outputs == 'logits' else None}


def _onnx_runner(data: bytes):
  from bisenet_jax.export import onnx_runtime
  session = onnx_runtime.session(data)
  return lambda images: session.run(None, {INPUT_NAME: images})[0]


def _stablehlo_runner(data: bytes):
  from bisenet_jax.export import stablehlo_file
  exported = stablehlo_file.load(data)
  return lambda images: np.asarray(exported.call(images))


def _opset(data: bytes) -> int:
  from bisenet_jax.export import onnx_file
  return onnx_file.opset(data)


def summary(job: ExportJob, result: dict) -> str:
  interface, check = result['interface'], result['check']
  kind = f"onnx opset {result['opset']}" if result['opset'] else 'stablehlo (jax.export)'
  normalisation = ('uint8 RGB, normalised in the graph' if interface.preprocessing else
                   f'RGB, (x - {list(MEAN_RGB)}) / {list(STD_RGB)}')
  if interface.input_size is None:
    size = "any size (the network runs at the image's own size)"
  elif interface.any_input_size:
    size = f'any size (the network runs at {format_size(interface.input_size)})'
  else:
    size = 'fixed size'
  output_dtype = 'uint8' if interface.outputs == 'labels' else 'float32'
  line = f"check on {check['images']}: {check['agreement']:.2%} of the labels equal JAX float32's"
  if check['logits_error'] is not None:
    line += f"; max |logits - JAX| = {check['logits_error']:.1e} of max |logits|"
  lines = [
      f"wrote {result['path']}: {kind}, {interface.dtype}, {result['bytes'] / 2**20:.1f} MiB",
      f'input  {INPUT_NAME} {describe(interface.input_shape(), interface.input_dtype)} '
      f'{interface.layout.upper()}, {size}, {normalisation}',
      f'output {interface.output_name} {describe(interface.output_shape(), output_dtype)}',
      f'test resize: each image resized to fit {format_size(interface.resize_to)} (keeping its '
      "aspect ratio) before the file, its output back to the image's size (recorded in "
      f"{'the file' if result['opset'] else record_path(job.output)})",
      line]
  if job.triton:
    spec = job.triton
    lines.append(f'triton: {triton.model_folder(job.output, spec) / triton.CONFIG_FILE} '
                 f'(onnxruntime_onnx, max_batch_size {spec.max_batch_size}, dynamic batching '
                 f'{spec.max_queue_delay_ms:g} ms, KIND_{spec.instance_kind.upper()})'
                 + (f', {triton.LABELS_FILE}' if result['labels'] else ', no class names'))
  return '\n'.join(lines)


@cli.user_errors_exit
def main(argv=None) -> None:
  job = job_from_args(parse_args(argv))
  print(summary(job, export(job)))


if __name__ == '__main__':
  main()
