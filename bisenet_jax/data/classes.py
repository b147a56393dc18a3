"""The ``classes.txt`` file that lists a dataset's classes, in class-index order.

A ``classes.txt`` has one class per line: ``name`` or ``name R G B``. Reading it gives a
``specs.ClassSet``.
"""

import pathlib
import re

from bisenet_jax.errors import UserError
from bisenet_jax.specs.classes import MAX_CLASSES, ClassSet

CLASSES_FILE = 'classes.txt'
_INTEGER = re.compile(r'[+-]?\d+')


def read_classes_file(path):
  """Reads a class list: one class per line, `name` or `name R G B`, in class-index order.

  A name may contain spaces ('traffic light'); a line whose last three words are integers
  gives the class that colour. Either every class has a colour or none has (then they get
  `default_palette`). Blank lines, and lines whose first non-blank character is '#', are
  skipped; surrounding whitespace is dropped.

  Args:
    path: the classes file (UTF-8, with or without a byte-order mark).

  Returns:
    ClassSet.

  Raises:
    UserError: the file is missing or unreadable, or a line is invalid (the message names the
      file and the line): a colour outside 0..255, a repeated name, colours on some lines only,
      fewer than 2 or more than 255 classes.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding='utf-8-sig')
  except FileNotFoundError:
    raise UserError(f'The class list {path} does not exist: write one class name per line, '
                    'optionally followed by its colour R G B (e.g. "road 128 64 128")') from None
  except (OSError, UnicodeDecodeError) as error:
    raise UserError(f'Cannot read the class list {path} ({error}): save it as UTF-8 text') from None
  entries = [(number, *_parse_class_line(path, number, line.strip()))
             for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.strip().startswith('#')]
  if not 2 <= len(entries) <= MAX_CLASSES:
    count = f'{len(entries)} class' + ('' if len(entries) == 1 else 'es')
    raise UserError(f'{path} lists {count}, but a model needs 2 to {MAX_CLASSES} (the background '
                    'is a class too): list one class per line')
  first_line = {}
  for number, name, _ in entries:
    if name in first_line:
      raise UserError(f'{path}:{number}: class {name!r} is already on line {first_line[name]}: '
                      'class names must be unique')
    first_line[name] = number
  coloured = [colour is not None for _, _, colour in entries]
  if any(coloured) and not all(coloured):
    number, name, colour = entries[coloured.index(not coloured[0])]
    has, lacks = ('has', 'lacks') if colour is not None else ('lacks', 'has')
    raise UserError(f'{path}:{number}: class {name!r} {has} a colour but line {entries[0][0]} '
                    f'{lacks} one: give every class a colour R G B, or none (for default colours)')
  names = tuple(name for _, name, _ in entries)
  return ClassSet(names, [colour for _, _, colour in entries] if coloured[0] else None)


def _parse_class_line(path, number, line):
  """Returns (name, (R, G, B) or None) of one stripped, non-empty classes-file line."""
  words = line.split()
  if len(words) >= 4 and all(_INTEGER.fullmatch(word) for word in words[-3:]):
    name, colour = ' '.join(words[:-3]), tuple(int(word) for word in words[-3:])
    if not all(0 <= value <= 255 for value in colour):
      raise UserError(f'{path}:{number}: the colour {" ".join(words[-3:])} of {name!r} is '
                      'outside 0..255: give R G B as integers 0..255')
    return name, colour
  return ' '.join(words), None
