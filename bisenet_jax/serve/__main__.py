"""Serves a model over the Open Inference Protocol (KServe v2), REST and gRPC, with dynamic
batching; GET / is a page that segments an image in the browser.

  python -m bisenet_jax.serve --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth
  python -m bisenet_jax.serve --checkpoint r18_labels.onnx --host 0.0.0.0 --max-batch-size 16

See docs/serving.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from bisenet_jax import cli
from bisenet_jax.errors import UserError
from bisenet_jax.serve.spec import Limits, ServeSpec
from bisenet_jax.specs import SIZE_FORMAT


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.serve',
                                   description=__doc__.splitlines()[0],
                                   epilog='Sizes are HEIGHTxWIDTH.')
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, a training '
                      'workdir, or an .onnx from python -m bisenet_jax.export (no JAX needed)')
  parser.add_argument('--host', default='127.0.0.1',
                      help='the address both servers bind (default 127.0.0.1: this machine '
                      'only; 0.0.0.0 for every IPv4 interface)')
  parser.add_argument('--port', type=_port('--port'), default=8080, help='REST port (8080)')
  parser.add_argument('--grpc-port', type=_port('--grpc-port'), default=8081,
                      help='gRPC port (8081)')
  parser.add_argument('--model-name', default='bisenet',
                      help='the name in the protocol paths, /v2/models/<name> (bisenet)')
  parser.add_argument('--max-batch-size', type=cli.positive_int('--max-batch-size'), default=8,
                      help='most images per forward pass and per request; 1 turns batching '
                      'off (8)')
  parser.add_argument('--max-batch-delay-ms', type=_non_negative('--max-batch-delay-ms'),
                      default=5.0, help='how long a batch waits for more requests of its '
                      'image size after its oldest arrived (5)')
  parser.add_argument('--max-queue', type=cli.positive_int('--max-queue'), default=64,
                      help='most images waiting; a request beyond it is refused at once, 503 '
                      '(64)')
  parser.add_argument('--max-pixels', type=cli.positive_int('--max-pixels'), default=8388608,
                      help='most pixels per image, H x W (8388608: 2048x4096)')
  parser.add_argument('--max-request-bytes', type=cli.positive_int('--max-request-bytes'),
                      default=64 << 20, help='largest request body, else 413 (67108864)')
  parser.add_argument('--max-json-bytes', type=cli.positive_int('--max-json-bytes'),
                      default=8 << 20, help='largest JSON body, or JSON header of a binary '
                      'body, else 413 (8388608)')
  parser.add_argument('--max-connections', type=cli.positive_int('--max-connections'),
                      default=32, help='most REST connections open at once; a new one beyond '
                      'them closes one whose request arrives too slowly, else is answered 503 '
                      '(32)')
  parser.add_argument('--max-header-bytes', type=cli.positive_int('--max-header-bytes'),
                      default=64 << 10, help="most bytes of a request's headers, else 431 "
                      '(65536)')
  parser.add_argument('--header-timeout-s', type=_seconds('--header-timeout-s'), default=10.0,
                      help="seconds a request's headers may take to arrive whole, else 408 and "
                      'the connection is closed (10)')
  parser.add_argument('--body-timeout-s', type=_seconds('--body-timeout-s'), default=30.0,
                      help="seconds a request's body may take to arrive whole, else 408; and "
                      'an answer may wait for a client that takes none of it (30)')
  parser.add_argument('--keep-alive-s', type=_seconds('--keep-alive-s'), default=5.0,
                      help='seconds an idle connection stays open (5)')
  parser.add_argument('--request-timeout-s', type=_seconds('--request-timeout-s'), default=60.0,
                      help='seconds a request may wait for its forward pass, else 504 (gRPC: '
                      "or the client's deadline, DEADLINE_EXCEEDED) (60)")
  parser.add_argument('--grpc-max-rpcs', type=cli.positive_int('--grpc-max-rpcs'), default=32,
                      help='most gRPC calls at once; beyond them a call is RESOURCE_EXHAUSTED '
                      '(32)')
  parser.add_argument('--grpc-max-streams', type=cli.positive_int('--grpc-max-streams'),
                      default=16, help='most calls at once on one gRPC connection (16)')
  parser.add_argument('--threads', type=cli.positive_int('--threads'),
                      help="the threads the model computes on: ONNX Runtime's intra-op threads "
                      "or XLA's CPU thread pool (default: one per core)")
  parser.add_argument('--warmup', type=_sizes, default=(), metavar=f'{SIZE_FORMAT},...',
                      help='image sizes to compile (JAX) or run once before the server is '
                      'ready, e.g. 512x1024,1024x2048')
  cli.add_ema_argument(parser)
  cli.add_dataset_arguments(parser, layout=False)
  cli.add_inference_arguments(parser)
  return parser.parse_args(argv)


def serve_spec(args: argparse.Namespace) -> ServeSpec:
  """The server's spec of its flags: everything below this edge receives it, never the flags."""
  limits = Limits(max_batch_size=args.max_batch_size, max_pixels=args.max_pixels,
                  max_request_bytes=args.max_request_bytes, max_json_bytes=args.max_json_bytes,
                  max_connections=args.max_connections, max_header_bytes=args.max_header_bytes,
                  header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
                  keep_alive_s=args.keep_alive_s, request_timeout_s=args.request_timeout_s,
                  grpc_max_rpcs=args.grpc_max_rpcs,
                  grpc_max_streams=args.grpc_max_streams)
  return ServeSpec(model_name=args.model_name, host=args.host, port=args.port,
                   grpc_port=args.grpc_port, max_batch_delay_s=args.max_batch_delay_ms / 1000,
                   max_queue=args.max_queue, warmup=args.warmup, limits=limits)


def _port(flag: str):
  def parse(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
      raise UserError(f'{flag} {text!r} must be a port number, 1 to 65535')
    return int(text)
  return parse


def _non_negative(flag: str):
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      value = -1.0
    if not value >= 0:
      raise UserError(f'{flag} {text!r} must be a number of milliseconds, 0 or more')
    return value
  return parse


def _seconds(flag: str):
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      value = 0.0
    if not 0 < value < float('inf'):
      raise UserError(f'{flag} {text!r} must be a number of seconds above 0')
    return value
  return parse


def _sizes(text: str):
  return tuple(cli.size_argument('--warmup')(part) for part in text.split(',') if part)


@contextlib.contextmanager
def _argv_hidden():
  """``import kserve`` parses sys.argv (kserve/model_server.py's module-level
  ``parser.parse_known_args()``): it would read our flags as its own (argparse accepts
  abbreviations) or exit on them, so it sees none."""
  argv = sys.argv
  sys.argv = argv[:1]
  try:
    yield
  finally:
    sys.argv = argv


@cli.user_errors_exit
def main(argv=None) -> None:
  args = parse_args(argv)
  spec = serve_spec(args)
  with _argv_hidden():
    try:
      from bisenet_jax.serve import listeners
    except ImportError as error:
      raise UserError(f'serving needs the serve extra ({error.name} is missing): '
                      "pip install -e '.[serve]'") from None
  segmenter = cli.load_segmenter(args, cli.inference_spec(args), root=None)
  listeners.run(segmenter, spec)


if __name__ == '__main__':
  main()
