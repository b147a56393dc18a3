"""The command-line edge every tool shares: its flags, the specs they build, one-line errors.

Each command parses its flags here into ``specs`` objects (sizes HEIGHTxWIDTH), so the code below
the edge never sees a flag and every user error is raised here, in one line. Free of JAX on
purpose: ``python -m bisenet_jax.predict`` runs an exported ``.onnx`` on ONNX Runtime with these
flags, where JAX need not be installed.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import traceback
from typing import Callable

from bisenet_jax.data import sources
from bisenet_jax.data.classes import read_classes_file
from bisenet_jax.errors import UserError
from bisenet_jax.specs import (KINDS, MODES, SIZE_FORMAT, DatasetSpec, FolderLayout,
                               InferenceSpec, Size, parse_size)

DISTRIBUTED_CHOICES = ('auto', 'yes', 'no')
DISTRIBUTED_HELP = ("connect the processes of a multi-process launch: 'auto' (default) when "
                    'SLURM with several tasks, a TPU pod slice, Open MPI or '
                    'JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID are detected')


def user_errors_exit(main: Callable) -> Callable:
  """Runs ``main``; a ``UserError`` prints ``error: <message>`` on stderr and exits with 2.

  In a multi-process run any failure ends the process at once (``os._exit``): JAX's orderly
  shutdown would wait for the other processes, which may be blocked in a collective waiting
  for this one. Ended abruptly, its peers see the lost connection and stop too.
  """

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      _exit(2)
    except Exception:
      if not _in_multiprocess_run():
        raise
      traceback.print_exc()
      _exit(1)

  return wrapper


def _in_multiprocess_run() -> bool:
  jax = sys.modules.get('jax')  # Not imported here: some entry points run without JAX.
  return jax is not None and jax.distributed.is_initialized()


def _exit(code: int) -> None:
  if _in_multiprocess_run():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def parse_absl_flags() -> None:
  """Sets absl's flags to their defaults in a program that parses its own flags with argparse:
  grain's worker processes read their settings from absl's flags."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS(sys.argv[:1])


def add_distributed_argument(parser: argparse.ArgumentParser) -> None:
  """``--distributed auto|yes|no``, the argument of ``parallel.setup``."""
  parser.add_argument('--distributed', choices=DISTRIBUTED_CHOICES, default='auto',
                      help=DISTRIBUTED_HELP)


def add_ema_argument(parser: argparse.ArgumentParser) -> None:
  """``--ema`` / ``--no-ema``: which weights of a checkpoint that keeps an EMA (default: the
  EMA when there is one)."""
  parser.add_argument('--ema', action=argparse.BooleanOptionalAction, default=None,
                      help="use the checkpoint's EMA of its weights (sssegmentation's model_ema; "
                      'an error without one) or, with --no-ema, its weights; default: the EMA '
                      'when the checkpoint has one')


def size_argument(flag: str) -> Callable[[str], Size]:
  """An argparse ``type`` reading HEIGHTxWIDTH (a bad value is a one-line ``UserError``)."""
  return lambda text: parse_size(text, flag)


def positive_int(flag: str) -> Callable[[str], int]:
  def parse(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
      raise UserError(f'{flag} {text!r} must be a positive integer')
    return int(text)
  return parse


class _Renamed(argparse.Action):
  """A flag that no longer exists: using it is a one-line error that shows its replacement."""

  def __init__(self, option_strings, dest, replacement: str, **kwargs):
    super().__init__(option_strings, dest, nargs='?', help=argparse.SUPPRESS, **kwargs)
    self.replacement = replacement

  def __call__(self, parser, namespace, values, option_string=None):
    raise UserError(f'{option_string} is gone: use {self.replacement}')


def add_renamed_flags(parser: argparse.ArgumentParser, renamed: dict[str, str]) -> None:
  """Refuses each old flag of ``renamed`` {old: replacement} with a one-line message."""
  for old, replacement in renamed.items():
    parser.add_argument(old, action=_Renamed, replacement=replacement, dest=f'_renamed_{old}')


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of ``specs.InferenceSpec``, shared by ``evaluate`` and ``predict``."""
  group = parser.add_argument_group('inference (default: one whole-image forward pass)')
  group.add_argument('--mode', choices=MODES, default='whole',
                     help="'whole': the full image in one pass (the reference protocol); "
                     "'slide': average logits over a grid of --window-size windows")
  group.add_argument('--window-size', type=size_argument('--window-size'), metavar=SIZE_FORMAT,
                     help='window size for --mode slide, e.g. 1024x1024')
  group.add_argument('--window-stride', type=size_argument('--window-stride'),
                     metavar=SIZE_FORMAT, help='step between windows for --mode slide, e.g. '
                     '768x768')
  group.add_argument('--flip', action='store_true',
                     help='also run each image mirrored left-right and average the logits')
  group.add_argument('--scales', type=_scales, default=(1.0,), metavar='S1,S2,...',
                     help='image scale factors whose logits are averaged, e.g. '
                     '0.75,1.0,1.25,1.5,1.75 (default: 1.0)')
  group.add_argument('--input-size', type=size_argument('--input-size'), metavar=SIZE_FORMAT,
                     help='resize every image to this size before the model and the logits '
                     "back to the image's size (default: each image at its own size)")
  add_renamed_flags(parser, {'--crop': f'--window-size {SIZE_FORMAT}',
                             '--stride': f'--window-stride {SIZE_FORMAT}'})


def inference_spec(args: argparse.Namespace) -> InferenceSpec:
  return InferenceSpec(mode=args.mode, window=args.window_size, stride=args.window_stride,
                       scales=args.scales, flip=args.flip, input_size=args.input_size)


def _scales(text: str) -> tuple[float, ...]:
  """'0.75,1.0,1.25' -> (0.75, 1.0, 1.25); ``InferenceSpec`` checks that they are positive."""
  try:
    return tuple(float(part) for part in text.split(','))
  except ValueError:
    raise UserError(f'--scales {text!r} is not a list of numbers: write e.g. '
                    '0.75,1.0,1.25') from None


def add_dataset_arguments(parser: argparse.ArgumentParser, layout: bool = True) -> None:
  """The dataset flags: its kind, classes and test resize target and, with ``layout``, a folder
  dataset's layout (``specs.FolderLayout``'s fields)."""
  group = parser.add_argument_group(
      'dataset (default: what the checkpoint records; official checkpoints are Cityscapes)')
  group.add_argument('--dataset', choices=KINDS,
                     help="the dataset layout and its classes (default: the checkpoint's, "
                     'else cityscapes)')
  group.add_argument('--classes', metavar='FILE',
                     help="--dataset folder: a classes.txt (default: the checkpoint's classes, "
                     'else <data root>/classes.txt)')
  group.add_argument('--resize-to', type=size_argument('--resize-to'), metavar=SIZE_FORMAT,
                     help='the test Resize target: images are resized to fit it, keeping their '
                     'aspect ratio, and their masks come back at their own size (a no-op for '
                     "1024x2048 Cityscapes frames). Default: the checkpoint's (or exported "
                     "file's) recipe's, else the dataset's")
  add_renamed_flags(parser, {'--base-size': f'--resize-to {SIZE_FORMAT} (height first)'})
  if not layout:
    return
  for field in FolderLayout.__dataclass_fields__.values():
    flag = f'--{field.name.replace("_", "-")}'
    help_text = f'{field.metadata["help"]} (default {field.default!r})'
    if field.type == 'bool':
      group.add_argument(flag, dest=field.name, choices=['yes', 'no'], help=help_text)
    else:
      group.add_argument(flag, dest=field.name, type=int if field.type == 'int' else str,
                         help=help_text)


def dataset_spec(args: argparse.Namespace, recorded: DatasetSpec | None,
                 root: str | None) -> DatasetSpec:
  """The dataset to evaluate or label: the flags, else what the checkpoint recorded."""
  layout = {}
  for field in FolderLayout.__dataclass_fields__.values():
    value = getattr(args, field.name, None)
    if value is not None:
      layout[field.name] = value == 'yes' if field.type == 'bool' else value
  return sources.resolve_dataset(
      args.dataset, root=root, recorded=recorded, layout=layout,
      classes=read_classes_file(args.classes) if args.classes else None,
      resize_to=getattr(args, 'resize_to', None))


def load_segmenter(args: argparse.Namespace, spec: InferenceSpec, root: str | None):
  """The ``Segmenter`` of ``--checkpoint`` with the command's inference, EMA, dataset and, where
  it has one, ``--threads`` flags (``root``: the data root, where a folder dataset's classes may
  be read)."""
  from bisenet_jax.segmenter import Segmenter
  return Segmenter.load(args.checkpoint, inference=spec, ema=args.ema,
                        dataset=lambda recorded: dataset_spec(args, recorded, root),
                        threads=getattr(args, 'threads', None))
