"""Benchmarks the JAX model (and optionally the PyTorch reference) over a sweep.

  python -m bisenet_jax.bench infer --arch bisenetv1_r18 --input-size 1024x2048 --compare-torch
  python -m bisenet_jax.bench train --arch bisenetv1_r18,bisenetv1_r50 --dtype float32,bfloat16 \
      --input-size 1024x1024 --batch-per-device 2 --devices 1,2,4,8 \
      --output results.jsonl --plot scaling.png
  python -m bisenet_jax.bench serve --checkpoint runs/r18 --checkpoint r18_int8.onnx \
      --input-size 512x1024 --concurrency 1,4,16 --batching on,off --output serve.jsonl
  python -m bisenet_jax.bench data --arch bisenetv1_r18,fastscnn --data-workers 2

Every point states what it measured: compile time apart, then the median and p90 step time of
``--steps`` blocked steps after ``--warmup`` ones; img/s over all devices and per device;
weak-scaling efficiency vs the 1-device point (same per-device batch); FLOPs per image from
XLA's cost analysis and from the analytic convolution count; MFU against datasheet peaks ('n/a'
for devices without one, e.g. CPUs, unless ``--peak-tflops``); peak device memory where the
backend reports it; for 'train' the input pipeline's rate on real 1024x2048 PNG files at the
reference recipe (img/s, img/s per CPU core, the cores one device of this kind needs) and the
share of a fed step spent waiting for data. ``--compare-torch`` runs the same 1-device points
with the PyTorch reference in this process, on the same inputs and thread count, and prints the
JAX/PyTorch ratios. A multi-process run (GPU cluster, TPU pod slice, or processes on one host)
starts the same command in every process (see ``bisenet_jax.parallel``); process 0 reports.
'serve' loads ``python -m bisenet_jax.serve`` on this machine with a fixed number of requests
and compares it with the model alone (``serve_load``; docs/serving.md, "Speed"). 'data' runs
the training input pipeline alone at each network's recipe, reading the frames as PNG files and
through their decoded-frame records (``data_side``; docs/benchmarks.md, "Feeding an
accelerator"). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import itertools
import os
import platform

import jax

from bisenet_jax import cli, parallel
from bisenet_jax.bench import data_side, flops, jax_side, report, serve_load, torch_side
from bisenet_jax.errors import UserError
from bisenet_jax.specs import NETWORKS, PRECISIONS, SIZE_FORMAT, format_size


def _list(cast):
  return lambda text: [cast(item) for item in text.split(',') if item]


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('mode', choices=['infer', 'train', 'serve', 'data'])
  parser.add_argument('--arch', type=_list(str), default=['bisenetv1_r18'],
                      help=f'networks, any of {",".join(NETWORKS)}')
  parser.add_argument('--devices', type=_list(int),
                      help='device counts (sub-meshes); default 1, 2, 4, ... up to all')
  parser.add_argument('--batch-per-device', type=_list(int), default=[1])
  parser.add_argument('--input-size', type=_list(cli.size_argument('--input-size')),
                      metavar=f'{SIZE_FORMAT},...',
                      help='input sizes; default 1024x2048 (infer), 1024x1024 (train), '
                      '512x1024 (serve: one size)')
  parser.add_argument('--dtype', type=_list(str), default=['float32'],
                      help='float32,bfloat16,float16 (train: with dynamic loss scaling)')
  parser.add_argument('--precision', default='highest', choices=PRECISIONS,
                      help='float32 convolutions and matmuls: highest (full float32, as the '
                      'reference and training by default), tensorfloat32, bfloat16 (one pass) or '
                      'default (the backend\'s: TF32 on NVIDIA GPUs since Ampere, bfloat16 on '
                      'TPUs); CPUs compute in full at every setting')
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--compare-torch', action='store_true')
  parser.add_argument('--compare-onnx', action='store_true',
                      help='infer: also ONNX Runtime (CPU) on the exported model (export extra)')
  parser.add_argument('--onnx-dtypes', type=_list(str), default=['float32'],
                      help='--compare-onnx: the exported files to time, any of float32,float16,'
                      'int8 (int8 calibrated on the input pipeline\'s street frames)')
  parser.add_argument('--torch-variants', type=_list(str), default=list(torch_side.VARIANTS),
                      help=f'any of {",".join(torch_side.VARIANTS)} (default: all)')
  parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s own)')
  parser.add_argument('--data-workers', type=int, default=0,
                      help='train, data: grain worker processes of the measured input pipeline '
                           '(config.data.worker_count; 0 = threads in this process)')
  parser.add_argument('--data-threads', type=int, default=0,
                      help='train, data: reader threads per process of the measured input '
                           'pipeline (config.data.threads; 0 = one per core)')
  parser.add_argument('--read', type=_list(str),
                      help=f'data: how the frames are read, any of {",".join(data_side.READS)} '
                      '(default: both)')
  parser.add_argument('--data-frames', default=data_side.DEFAULT_FRAMES_DIR,
                      help='train, data: where the input pipeline\'s 1024x2048 PNG frames are written '
                           'once (Cityscapes layout), with their decoded-frame records in '
                           'records/ (default: %(default)s)')
  parser.add_argument('--peak-tflops', type=float, help='per-device peak for MFU, if not listed')
  parser.add_argument('--output', help='append one JSON object per point to this .jsonl')
  serve = parser.add_argument_group('serve')
  serve.add_argument('--checkpoint', action='append',
                     help='serve: a model to serve (repeat the flag for several)')
  serve.add_argument('--url', help='serve: load this running server (http://127.0.0.1:PORT) '
                     'instead of starting one per model and batching choice')
  serve.add_argument('--batching', type=_list(str), help='serve: on,off (default both; off: '
                     'the server runs one image per forward pass)')
  serve.add_argument('--max-batch-size', type=cli.positive_int('--max-batch-size'), default=8,
                     help="serve: the server's largest batch with batching on (default 8)")
  serve.add_argument('--concurrency', type=_list(int), default=[1, 4, 16],
                     help='serve: requests in flight, one client thread each (default 1,4,16)')
  serve.add_argument('--requests', type=cli.positive_int('--requests'), default=64,
                     help='serve: requests per point (default 64)')
  serve.add_argument('--time-limit-s', type=float, default=300.0,
                     help='serve: no request of a point starts after this (default 300)')
  parser.add_argument('--plot', help='write a PNG of img/s and scaling efficiency vs devices')
  cli.add_renamed_flags(parser, {'--resolution': f'--input-size {SIZE_FORMAT}'})
  cli.add_distributed_argument(parser)
  return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """What one ``bench`` command measures, checked and with its defaults resolved (the flags
  stay at the edge, ``sweep_from_args``)."""
  mode: str
  archs: tuple[str, ...]
  devices: tuple[int, ...]
  batch_per_device: tuple[int, ...]
  input_sizes: tuple[tuple[int, int], ...]
  dtypes: tuple[str, ...]
  precision: str
  warmup: int
  steps: int
  compare_torch: bool
  compare_onnx: bool
  onnx_dtypes: tuple[str, ...]
  torch_variants: tuple[str, ...]
  threads: int | None
  data_workers: int
  data_threads: int
  data_frames: str
  peak_tflops: float | None


def sweep_from_args(args: argparse.Namespace) -> Sweep:
  """The sweep the flags ask for, every value checked (after ``parallel.setup``: the default
  device counts depend on the devices visible)."""
  if args.checkpoint or args.url:
    raise UserError('--checkpoint and --url are for bench serve; infer and train measure '
                    '--arch with random weights')
  available, processes = jax.device_count(), jax.process_count()
  # A sub-mesh takes the same number of devices from every process (jax_side.mesh_devices).
  devices = args.devices or [2**i for i in range(available.bit_length())
                             if 2**i <= available and 2**i % processes == 0]
  if max(devices) > available:
    raise UserError(f'--devices asks for {max(devices)} but only {available} are visible.')
  unknown = set(args.arch) - set(NETWORKS) or set(args.dtype) - set(jax_side.DTYPES) or set(
      args.torch_variants) - set(torch_side.VARIANTS)
  if unknown:
    raise UserError(f'unknown value(s) {sorted(unknown)}; see --help for the choices.')
  if args.compare_onnx and args.mode != 'infer':
    raise UserError('--compare-onnx measures inference only: use the infer mode.')
  if set(args.onnx_dtypes) - {'float32', 'float16', 'int8'}:
    raise UserError(f'--onnx-dtypes {",".join(args.onnx_dtypes)}: choose among float32, '
                    'float16, int8')
  if args.mode == 'train' and 1 in args.batch_per_device and 1 in devices:
    raise UserError('training needs at least 2 images per step (BatchNorm over 1x1 maps): '
                    'use --batch-per-device 2 or more.')
  input_sizes = args.input_size or [(1024, 2048) if args.mode == 'infer' else (1024, 1024)]
  return Sweep(args.mode, tuple(args.arch), tuple(sorted(devices)), tuple(args.batch_per_device),
               tuple(input_sizes), tuple(args.dtype), args.precision, args.warmup, args.steps,
               args.compare_torch, args.compare_onnx, tuple(args.onnx_dtypes),
               tuple(args.torch_variants), args.threads, args.data_workers, args.data_threads,
               args.data_frames,
               args.peak_tflops)


def serve_sweep_from_args(args: argparse.Namespace) -> serve_load.ServeSweep:
  """The serve sweep the flags ask for, every value checked before a model is loaded."""
  if not args.checkpoint:
    raise UserError('bench serve needs a model: pass --checkpoint (a checkpoint or an .onnx)')
  missing = [path for path in args.checkpoint if not os.path.exists(path)]
  if missing:
    raise UserError(f'--checkpoint {missing[0]} does not exist')
  url = None if args.url is None else serve_load.loopback_url(args.url)
  if url and (len(args.checkpoint) > 1 or args.batching):
    raise UserError('--url measures the one running server as it is: give the one --checkpoint '
                    'it serves (for the in-process figures) and no --batching')
  batching = args.batching or ['on', 'off']
  if set(batching) - {'on', 'off'} or min(args.concurrency, default=0) < 1:
    raise UserError(f'--batching {",".join(batching)} --concurrency '
                    f'{",".join(map(str, args.concurrency))}: choose among on,off and give '
                    'positive concurrencies')
  sizes = args.input_size or [(512, 1024)]
  if len(sizes) != 1 or args.time_limit_s <= 0:
    raise UserError('bench serve takes one --input-size and a positive --time-limit-s')
  return serve_load.ServeSweep(tuple(args.checkpoint), url, tuple(batching), args.max_batch_size,
                               tuple(args.concurrency), args.requests, args.time_limit_s,
                               sizes[0], args.warmup, args.steps, args.threads)


def serve_main(args: argparse.Namespace) -> None:
  sweep = serve_sweep_from_args(args)
  env = serve_load.environment()
  print(f"{env['cpu']}, {env['cpu_count']} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {sweep.requests} requests per point "
        f'(at most {sweep.time_limit_s:g} s), {format_size(sweep.input_size)} frames', flush=True)
  print(report.table([], serve_load.COLUMNS), flush=True)

  def emit(row):
    print(report.table([row], serve_load.COLUMNS).splitlines()[1], flush=True)
    for error in row['errors']:
      print(f'  failed: {error}', flush=True)
    if args.output:
      report.append_jsonl([row], args.output)

  rows = serve_load.run(sweep, emit)
  print()
  print(report.table(rows, serve_load.COLUMNS))
  for line in serve_load.goal_lines(rows):
    print(line)
  if args.output:
    print(f'appended {len(rows)} rows to {args.output}')


def data_main(args: argparse.Namespace) -> None:
  reads = args.read or list(data_side.READS)
  unknown = set(args.arch) - set(NETWORKS) or set(reads) - set(data_side.READS)
  if unknown or args.steps < 1 or args.data_workers < 0 or args.data_threads < 0:
    raise UserError(f'bench data: unknown value(s) {sorted(unknown)}, --steps {args.steps}, '
                    f'--data-workers {args.data_workers} --data-threads {args.data_threads}: see '
                    '--help for the choices')
  env = serve_load.environment()
  print(f"{env['cpu']}, {env['cpu_count']} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.steps} batches per row of "
        "1024x2048 street frames, the recipe's transforms", flush=True)
  print(report.table([], data_side.COLUMNS), flush=True)
  rows = []
  for arch in args.arch:
    for read in reads:
      rows.append(data_side.measure(arch, read, args.data_workers, args.data_threads, args.steps,
                                    args.data_frames))
      print(report.table(rows[-1:], data_side.COLUMNS).splitlines()[1], flush=True)
      if args.output:
        report.append_jsonl(rows[-1:], args.output)
  print()
  print(report.table(rows, data_side.COLUMNS))
  if args.output:
    print(f'appended {len(rows)} rows to {args.output}')


def environment() -> dict:
  return {'jax': jax.__version__, 'backend': jax.default_backend(), 'host': platform.node(),
          'cpu_count': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', '')}


def header(sweep: Sweep) -> str:
  """What the numbers depend on besides the code: versions, device, flags, threads."""
  env = environment()
  lines = [f"jax {env['jax']} on {env['backend']} ({jax.devices()[0].device_kind}, "
           f"devices: {jax.device_count()}, host CPUs: {env['cpu_count']}), "
           f"XLA_FLAGS={env['xla_flags'] or '(none)'}, "
           f'float32 convolutions and matmuls at precision {sweep.precision!r}',
           f'MFU peaks: {flops.PEAKS_SOURCE} (bisenet_jax/bench/flops.py; CPUs: n/a)']
  if sweep.compare_torch:
    import torch
    if sweep.threads:
      torch.set_num_threads(sweep.threads)
    lines.append(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
  return '\n'.join(lines)


def _same_workload(a: dict, b: dict) -> bool:
  return all(a[k] == b[k] for k in ('mode', 'arch', 'resolution', 'batch_per_device'))


def ratios(rows: list[dict]) -> list[str]:
  """Speed ratios per 1-device point: JAX over each ONNX Runtime file, and over eager fp32 and the
  fastest PyTorch variant."""
  lines = []
  for jax_row in (r for r in rows if r['impl'] == 'jax' and r['devices'] == 1):
    for onnx in (r for r in rows if r['impl'] == 'onnxruntime' and _same_workload(r, jax_row)
                 and r.get('img_per_s')):
      lines.append(f"JAX {jax_row['dtype']}/ONNX Runtime {onnx['dtype']} {jax_row['mode']} "
                   f"{jax_row['arch']} {jax_row['batch_per_device']}x{jax_row['resolution']}: "
                   f"{jax_row['img_per_s'] / onnx['img_per_s']:.2f}x")
    torch_results = [r for r in rows if r['impl'].startswith('torch-')
                     and _same_workload(r, jax_row) and r.get('img_per_s')]
    if not torch_results:
      continue
    eager = next((r for r in torch_results if r['impl'] == 'torch-eager'), None)
    fastest = max(torch_results, key=lambda r: r['img_per_s'])
    text = (f"JAX/PyTorch {jax_row['mode']} {jax_row['arch']} {jax_row['dtype']} "
            f"{jax_row['batch_per_device']}x{jax_row['resolution']}: ")
    if eager:
      text += f"{jax_row['img_per_s'] / eager['img_per_s']:.2f}x vs eager fp32, "
    text += f"{jax_row['img_per_s'] / fastest['img_per_s']:.2f}x vs fastest ({fastest['impl']})"
    lines.append(text)
  return lines


def run(sweep: Sweep, emit) -> list[dict]:
  """Measures every point; ``emit(row)`` is called as each row is done (console, .jsonl)."""
  measure = (jax_side.measure_infer if sweep.mode == 'infer' else
             functools.partial(jax_side.measure_train, data_workers=sweep.data_workers,
                               data_threads=sweep.data_threads, frames_dir=sweep.data_frames))
  rows, smallest = [], {}
  for arch, dtype, size, batch, devices in itertools.product(
      sweep.archs, sweep.dtypes, sweep.input_sizes, sweep.batch_per_device, sweep.devices):
    point = jax_side.Point(sweep.mode, arch, devices, batch, size, dtype, sweep.precision)
    base = dict(impl='jax', mode=sweep.mode, arch=arch, dtype=dtype,
                precision=sweep.precision, devices=devices,
                batch_per_device=batch, resolution=format_size(size),
                warmup=sweep.warmup, steps=sweep.steps, **environment())
    row = {**base, **measure(point, sweep.warmup, sweep.steps, sweep.peak_tflops)}
    row['img_per_s_per_device'] = row['img_per_s'] / devices
    # Weak scaling: per-device throughput vs the smallest device count of the same configuration
    # (the 1-device point, unless a multi-host sweep cannot run one).
    baseline = smallest.setdefault((arch, dtype, size, batch), row)
    row['scaling_baseline_devices'] = baseline['devices']
    row['scaling_efficiency'] = row['img_per_s_per_device'] / baseline['img_per_s_per_device']
    rows.append(row)
    emit(row)
    # The PyTorch variants fix their own precision, so each workload is measured once, beside
    # the first JAX dtype that runs it.
    if sweep.compare_torch and devices == 1 and not any(
        r['impl'].startswith('torch-') and _same_workload(r, row) for r in rows):
      for torch_row in torch_rows(sweep, point, base, row):
        rows.append(torch_row)
        emit(torch_row)
    if sweep.compare_onnx and devices == 1 and not any(
        r['impl'] == 'onnxruntime' and _same_workload(r, row) for r in rows):
      for onnx_dtype in sweep.onnx_dtypes:
        onnx_row = onnx_row_for(sweep, point, base, row, onnx_dtype)
        rows.append(onnx_row)
        emit(onnx_row)
  return rows


def onnx_row_for(sweep, point, base, jax_row, dtype: str) -> dict:
  from bisenet_jax.bench import onnx_side  # Needs the export extra.
  images, _ = jax_side.random_inputs(point)
  calibration = data_side.reference_frames(sweep.data_frames) if dtype == 'int8' else None
  row = {**base, 'impl': 'onnxruntime', 'dtype': dtype,
         **onnx_side.measure(point, images, sweep.warmup, sweep.steps, sweep.threads, dtype,
                             calibration)}
  row['img_per_s_per_device'] = row['img_per_s']
  row['jax_speedup'] = jax_row['img_per_s'] / row['img_per_s']
  return row


def torch_rows(sweep, point, base, jax_row):
  images, labels = jax_side.random_inputs(point)
  for variant in sweep.torch_variants:
    result = torch_side.measure(point, variant, images, labels, sweep.warmup, sweep.steps,
                                sweep.threads)
    row = {**base, 'impl': f'torch-{variant}', 'dtype': torch_side.VARIANT_DTYPES[variant],
           **result}
    if 'img_per_s' in row:
      row['img_per_s_per_device'] = row['img_per_s']
      row['jax_speedup'] = jax_row['img_per_s'] / row['img_per_s']
    yield row


@cli.user_errors_exit
def main(argv=None) -> None:
  args = parse_args(argv)
  if args.mode == 'serve':  # One process on this machine: no mesh, no device sweep.
    serve_main(args)
    return
  cli.parse_absl_flags()  # For the input pipeline's grain workers (--data-workers).
  if args.mode == 'data':  # The host's pipeline alone: no model, no devices.
    data_main(args)
    return
  parallel.setup(args.distributed)
  sweep = sweep_from_args(args)
  if jax.process_index() != 0:  # Every process measures; process 0 alone reports.
    with contextlib.redirect_stdout(io.StringIO()):
      run(sweep, emit=lambda row: None)
    return
  print(header(sweep), flush=True)
  print(report.table([]), flush=True)

  def emit(row):
    print(report.table([row]).splitlines()[1], flush=True)
    if args.output:  # Row by row, so an interrupted sweep keeps what it measured.
      report.append_jsonl([row], args.output)

  rows = run(sweep, emit)
  print()
  print(report.table(rows))
  for line in ratios(rows):
    print(line)
  if args.output:
    print(f'appended {len(rows)} rows to {args.output}')
  if args.plot:
    report.plot(rows, args.plot)
    print(f'wrote {args.plot}')


if __name__ == '__main__':
  main()
