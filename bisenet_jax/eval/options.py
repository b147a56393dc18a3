"""The command-line flags evaluation and prediction share, and the dataset they choose.

Free of JAX on purpose: ``python -m bisenet_jax.predict`` parses the same flags when it runs an
exported ``.onnx`` model on ONNX Runtime, where JAX need not be installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from bisenet_jax.data import folder, sources
from bisenet_jax.errors import UserError

MODES = ('whole', 'slide')  # Inference modes (``inference.segment_logits``).


def add_inference_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags that choose how logits are computed, shared with ``bisenet_jax.predict``."""
  group = parser.add_argument_group('inference (default: one whole-image forward pass)')
  group.add_argument('--mode', choices=MODES, default='whole',
                     help="'whole': the full image in one pass (the reference protocol); "
                     "'slide': average logits over a grid of --crop windows.")
  group.add_argument('--crop', metavar='WxH', help="window size for --mode slide, e.g. 1024x1024")
  group.add_argument('--stride', metavar='WxH',
                     help='step between windows for --mode slide, e.g. 768x768')
  group.add_argument('--flip', action='store_true',
                     help='also run each image mirrored left-right and average the logits')
  group.add_argument('--scales', default='1.0', metavar='S1,S2,...',
                     help='image scale factors whose logits are averaged, e.g. '
                     '0.75,1.0,1.25,1.5,1.75 (default: 1.0)')


def parse_size(text: str, flag: str) -> tuple[int, int]:
  """'WIDTHxHEIGHT' -> (width, height), both positive."""
  try:
    width, height = (int(part) for part in text.lower().split('x'))
  except ValueError:
    width = height = 0
  if width <= 0 or height <= 0:
    raise UserError(f'{flag} {text!r} is not a size: write WIDTHxHEIGHT, e.g. 2048x1024')
  return width, height


def height_width(text: str | None, flag: str) -> tuple[int, int] | None:
  return None if text is None else parse_size(text, flag)[::-1]


def parse_scales(text: str) -> tuple[float, ...]:
  """'0.75,1.0,1.25' -> (0.75, 1.0, 1.25); every scale must be a positive finite number."""
  try:
    scales = tuple(float(part) for part in text.split(','))
  except ValueError:
    scales = ()
  if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
    raise UserError(f'--scales {text!r} is not a list of positive numbers: '
                    'write e.g. 0.75,1.0,1.25')
  return scales


def add_dataset_arguments(parser: argparse.ArgumentParser, layout: bool = True) -> None:
  """The dataset flags: its kind and classes (shared with ``bisenet_jax.predict``) and, with
  ``layout``, a folder dataset's layout."""
  group = parser.add_argument_group(
      'dataset (default: what the checkpoint records; official checkpoints are Cityscapes)')
  group.add_argument('--dataset', choices=sources.KINDS,
                     help='the dataset layout and its classes (default: the checkpoint\'s, '
                     'else cityscapes)')
  group.add_argument('--classes', metavar='FILE',
                     help="--dataset folder: a classes.txt (default: the checkpoint's classes, "
                     'else <data root>/classes.txt)')
  if not layout:
    return
  defaults = sources.FolderLayout()
  for field, help_text in (
      ('image_dir', f"images' folder below the root (default {defaults.image_dir!r})"),
      ('mask_dir', f"masks' folder below the root (default {defaults.mask_dir!r})"),
      ('mask_suffix', f"masks' file ending (default {defaults.mask_suffix!r})"),
      ('ignore_index', f'mask value of ignored pixels (default {defaults.ignore_index})'),
      ('label_map', "'value:class,...' when mask values are not class indices")):
    group.add_argument(f'--{field.replace("_", "-")}', dest=field,
                       type=int if field == 'ignore_index' else str, help=help_text)
  group.add_argument('--reduce-zero-label', choices=['yes', 'no'],
                     help='mask value 0 is ignored and v is class v - 1 (as ADE20K)')


def dataset_info(args: argparse.Namespace, recorded: sources.DatasetInfo | None,
                 root: str | None) -> sources.DatasetInfo:
  """The dataset to evaluate or label: the flags, else what the checkpoint recorded."""
  kind = args.dataset or (recorded.kind if recorded else 'cityscapes')
  same = recorded is not None and recorded.kind == kind
  if args.classes:
    classes = folder.read_classes_file(args.classes)
  elif same:
    classes = recorded.classes
  elif kind == 'folder' and root is None:
    raise UserError('the checkpoint records no classes: pass --classes classes.txt (one class '
                    'name per line, optionally with its colour: name R G B)')
  else:
    classes = sources.dataset_classes(kind, root)
  layout = recorded.layout if same else sources.FolderLayout()
  given = {field: getattr(args, field, None) for field in ('image_dir', 'mask_dir',
                                                            'mask_suffix', 'ignore_index',
                                                            'label_map')}
  given = {field: value for field, value in given.items() if value is not None}
  if getattr(args, 'reduce_zero_label', None) is not None:
    given['reduce_zero_label'] = args.reduce_zero_label == 'yes'
  base_size = recorded.base_size if same else sources.TEST_BASE_SIZES[kind]
  return sources.DatasetInfo(kind, classes, dataclasses.replace(layout, **given), base_size)
