"""How the values stored in a mask become class indices: identity, reduce-zero-label or an
explicit value:class map, with the ignore value and the values a mask must not contain."""

import numpy as np

from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.errors import UserError


def make_label_table(num_classes, *, ignore_index=255, reduce_zero_label=False, label_map=None):
  """How mask values become class indices: a lookup table, and the values to refuse.

  By default a mask value v is class v. `reduce_zero_label` makes 0 ignored and v class v - 1
  (ADE20K's masks, mmsegmentation's option of that name). `label_map` {mask value: class}
  states every value instead; a class of 255 ignores the value, and a value it leaves out is
  refused. In every case `ignore_index` is ignored, and a value whose class would not be
  0..K-1 is refused.

  Args:
    num_classes: K.
    ignore_index: the mask value that marks pixels to ignore.
    reduce_zero_label: see above.
    label_map: see above; keys and classes may be ints or decimal strings (as in JSON).

  Returns:
    (table, refused): table uint8 [256], the class index of each mask value (IGNORE_LABEL for
    ignored ones); refused bool [256], True for the values a mask must not contain.

  Raises:
    UserError: both `reduce_zero_label` and `label_map` are given, a `label_map` entry is out of
      range, or `ignore_index` would also be a class.
  """
  if label_map and reduce_zero_label:
    raise UserError('Give either label_map or reduce_zero_label, not both: put what '
                    'reduce_zero_label does into label_map')
  if not 0 <= ignore_index <= 255:
    raise UserError(f'ignore_index must be a mask value 0..255, got {ignore_index}')
  values = np.arange(256)
  ignored = np.zeros(256, bool)
  if label_map:
    classes = np.full(256, -1)
    for value, class_index in _parse_label_map(label_map, num_classes):
      ignored[value] = class_index == IGNORE_LABEL
      classes[value] = -1 if ignored[value] else class_index
  elif reduce_zero_label:
    classes, ignored[0] = values - 1, True
  else:
    classes = values
  if 0 <= classes[ignore_index] < num_classes and not ignored[ignore_index]:
    raise UserError(f'ignore_index {ignore_index} is also class {classes[ignore_index]} of '
                    f'{num_classes}: choose an ignore_index that is no class, such as 255')
  ignored[ignore_index] = True
  is_class = (classes >= 0) & (classes < num_classes) & ~ignored
  table = np.where(is_class, classes, IGNORE_LABEL).astype(np.uint8)
  return table, ~is_class & ~ignored


def _parse_label_map(label_map, num_classes):
  """Yields (mask value, class index or IGNORE_LABEL) of each entry, checking their ranges."""
  for key, target in label_map.items():
    try:
      value, class_index = int(key), int(target)
    except (TypeError, ValueError):
      raise UserError(f'label_map entry {key!r}: {target!r} is not an integer pair: map mask '
                      'values 0..255 to class indices') from None
    if not 0 <= value <= 255 or not (0 <= class_index < num_classes
                                     or class_index == IGNORE_LABEL):
      raise UserError(f'label_map entry {value}: {class_index} is out of range: map mask values '
                      f'0..255 to classes 0..{num_classes - 1}, or to {IGNORE_LABEL} to ignore')
    yield value, class_index
