"""Exports a model to ONNX or StableHLO.

  python -m bisenet_jax.export --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth \
      --format onnx --output r18.onnx

The default interface is what a PyTorch export of the model has: input ``images`` float32
[N, 3, H, W] RGB normalised as the reference does, output ``logits`` float32 [N, K, ceil(H/8),
ceil(W/8)]; the batch size N is free, H x W fixed (``--input-size HEIGHTxWIDTH``, default
1024x2048).
``--layout nhwc``, ``--outputs labels`` (uint8 class ids at H x W, as ``predict_labels``),
``--with-preprocessing`` (uint8 RGB input, normalised in the graph) and ``--dtype float16``
(StableHLO only) change it. The file is written to a temporary name and renamed once it has
been checked: the output of the file on a random batch is compared with JAX's. See
docs/deployment.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from bisenet_jax import cli
from bisenet_jax.data.normalization import MEAN_RGB, STD_RGB
from bisenet_jax.errors import UserError
from bisenet_jax.export import (DTYPES, FORMATS, INPUT_NAME, LAYOUTS, OUTPUTS, Interface,
                                describe)
from bisenet_jax.files import write_atomically
from bisenet_jax.specs import SIZE_FORMAT


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.export',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, or a training '
                      'workdir (its latest checkpoint)')
  parser.add_argument('--format', required=True, help=' or '.join(FORMATS))
  parser.add_argument('--output', required=True, help='the file to write')
  parser.add_argument('--input-size', type=cli.size_argument('--input-size'),
                      default=(1024, 2048), metavar=SIZE_FORMAT,
                      help='the input image size (default 1024x2048)')
  cli.add_renamed_flags(parser, {'--height': f'--input-size {SIZE_FORMAT}',
                                 '--width': f'--input-size {SIZE_FORMAT}'})
  parser.add_argument('--layout', default='nchw', help='nchw (default, as PyTorch) or nhwc')
  parser.add_argument('--outputs', default='logits',
                      help='logits (default; stride 8) or labels (uint8 class ids at the input '
                      'size, after the reference bilinear upsampling)')
  parser.add_argument('--with-preprocessing', action='store_true',
                      help='take uint8 RGB images and normalise them inside the graph')
  parser.add_argument('--dtype', default='float32',
                      help='float32 (default) or float16 (stablehlo only)')
  parser.add_argument('--force', action='store_true', help='replace an existing --output')
  return parser.parse_args(argv)


def _choice(value: str, choices: tuple[str, ...], flag: str) -> str:
  if value not in choices:
    raise UserError(f'{flag} {value!r} is not one of {", ".join(choices)}')
  return value


def check_args(args: argparse.Namespace) -> None:
  """Every argument error before the (slow) checkpoint load and export."""
  _choice(args.format, FORMATS, '--format')
  _choice(args.layout, LAYOUTS, '--layout')
  _choice(args.outputs, OUTPUTS, '--outputs')
  _choice(args.dtype, DTYPES, '--dtype')
  if args.format == 'onnx' and args.dtype == 'float16':
    raise UserError('--dtype float16 is for --format stablehlo: jax2onnx 0.13 writes float32 '
                    'weights under float16 activations, which ONNX Runtime refuses; build a '
                    'float16 TensorRT engine from the float32 .onnx (trtexec --fp16)')
  output = Path(args.output)
  if output.is_dir():
    raise UserError(f'--output {output} is a folder: give a file name')
  if output.exists() and not args.force:
    raise UserError(f'{output} already exists: pass --force to replace it')
  if not output.parent.is_dir():
    raise UserError(f'{output.parent} does not exist: create it first')
  if args.format == 'onnx':  # The missing-extra message now, not after loading the checkpoint.
    from bisenet_jax.export import onnx_file, onnx_runtime
    onnx_file.require()
    onnx_runtime.require()  # The check of the written graph runs it.


def export(args: argparse.Namespace) -> dict:
  """Loads, exports, checks and writes; returns what the summary prints."""
  import jax
  import numpy as np

  from bisenet_jax import checkpoint
  from bisenet_jax.export import graph

  spec, variables, dataset = checkpoint.load_model(args.checkpoint)
  model = spec.build()
  interface = Interface(*args.input_size, model.num_classes, args.layout, args.outputs,
                        args.with_preprocessing, args.dtype)
  fn = graph.interface_fn(model, variables, interface)
  spec = graph.input_spec(interface)
  with jax.default_matmul_precision('highest'):  # Full fp32, as the reference (no TF32).
    if args.format == 'onnx':
      from bisenet_jax.export import onnx_file
      data = onnx_file.export_onnx(fn, spec, interface,
                                   None if dataset is None else json.dumps(dataset.to_json()))
      run = _onnx_runner(data)
    else:
      from bisenet_jax.export import stablehlo_file
      data = stablehlo_file.export_stablehlo(fn, spec)
      run = _stablehlo_runner(data)
    # The reference: the float32 JAX model with the same interface.
    reference = jax.jit(graph.interface_fn(model, variables,
                                           dataclasses.replace(interface, dtype='float32')))
    images = _random_input(interface)
    error = _compare(run(images), np.asarray(reference(images)), interface)
  write_atomically(args.output, data, remedy='choose another --output')
  return {'interface': interface, 'bytes': len(data), 'error': error,
          'opset': onnx_file.opset(data) if args.format == 'onnx' else None}


def _onnx_runner(data: bytes):
  from bisenet_jax.export import onnx_runtime
  session = onnx_runtime.session(data)
  return lambda images: session.run(None, {INPUT_NAME: images})[0]


def _stablehlo_runner(data: bytes):
  import numpy as np

  from bisenet_jax.export import stablehlo_file
  exported = stablehlo_file.load(data)
  return lambda images: np.asarray(exported.call(images))


def _random_input(interface: Interface):
  """One random image as the file takes it."""
  import numpy as np

  rng = np.random.default_rng(0)
  return interface.prepare(rng.integers(0, 256, (1, *interface.input_size, 3), np.uint8))


def _compare(got, expected, interface: Interface) -> str:
  import numpy as np

  if interface.outputs == 'labels':
    return f'{np.mean(got != expected):.2%} of the labels differ from JAX float32'
  error = float(np.abs(got.astype(np.float64) - expected).max())
  scale = float(np.abs(expected).max())
  return (f'max |{interface.dtype} file - JAX float32| = {error:.2e} '
          f'({error / scale:.1e} of max |logits| = {scale:.3g})')


def summary(args: argparse.Namespace, result: dict) -> str:
  interface = result['interface']
  kind = f"onnx opset {result['opset']}" if result['opset'] else 'stablehlo (jax.export)'
  normalisation = ('uint8 RGB, normalised in the graph' if interface.preprocessing else
                   f'RGB, (x - {list(MEAN_RGB)}) / {list(STD_RGB)}')
  output_dtype = 'uint8' if interface.outputs == 'labels' else 'float32'
  return '\n'.join([
      f"wrote {args.output}: {kind}, {interface.dtype}, {result['bytes'] / 2**20:.1f} MiB",
      f'input  {INPUT_NAME} {describe(interface.input_shape(), interface.input_dtype)} '
      f'{interface.layout.upper()}, {normalisation}',
      f'output {interface.output_name} {describe(interface.output_shape(), output_dtype)}',
      f"check on a random image: {result['error']}"])


@cli.user_errors_exit
def main(argv=None) -> None:
  args = parse_args(argv)
  check_args(args)
  print(summary(args, export(args)))


if __name__ == '__main__':
  main()
