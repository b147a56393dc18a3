"""How logits are computed for an image: the reference protocol, or sliding windows and test-time
augmentation, optionally at a fixed input size."""

from __future__ import annotations

import dataclasses
import math

from bisenet_jax.errors import UserError
from bisenet_jax.specs.sizes import Size, format_size

MODES = ('whole', 'slide')


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
  """The defaults are the reference protocol: one pass over the whole image at its own size.

  Users set these with the flags of ``evaluate`` and ``predict`` (the messages name them).

  Attributes:
    mode: 'whole' (one forward pass per view) or 'slide' (windows of ``window`` every
      ``stride``, their logits averaged).
    window: (height, width) of the sliding windows; 'slide' only.
    stride: (height, width) step between windows, at most ``window``; 'slide' only.
    scales: image scale factors whose logits are averaged.
    flip: also run each scale's left-right mirror image.
    input_size: (height, width) every image is resized to before the model (the logits are
      resized back to the image's size); None runs each image at its own size.
  """
  mode: str = 'whole'
  window: Size | None = None
  stride: Size | None = None
  scales: tuple[float, ...] = (1.0,)
  flip: bool = False
  input_size: Size | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise UserError(f'--mode {self.mode!r} is not one of {", ".join(MODES)}')
    if self.mode == 'slide' and not (self.window and self.stride):
      raise UserError('--mode slide needs --window-size and --window-stride, e.g. '
                      '--window-size 1024x1024 --window-stride 768x768')
    if self.mode == 'whole' and (self.window or self.stride):
      raise UserError('--window-size and --window-stride only apply to --mode slide')
    if self.window and (self.stride[0] > self.window[0] or self.stride[1] > self.window[1]):
      raise UserError(f'--window-stride {format_size(self.stride)} is larger than --window-size '
                      f'{format_size(self.window)}: the windows would leave pixels uncovered')
    if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
      raise UserError(f'--scales {",".join(f"{s:g}" for s in self.scales)} must be positive '
                      'numbers, e.g. 0.75,1.0,1.25')

  @property
  def is_plain(self) -> bool:
    """One whole-image pass at scale 1 without flip: what an exported file computes."""
    return self.mode == 'whole' and self.scales == (1.0,) and not self.flip

  def describe(self) -> str:
    """One line for logs: 'whole image, scales 1.0, flip off'."""
    mode = ('whole image' if self.mode == 'whole' else
            f'sliding {format_size(self.window)} windows, stride {format_size(self.stride)}')
    size = f', input size {format_size(self.input_size)}' if self.input_size else ''
    scales = ','.join(f'{s:g}' for s in self.scales)
    return f'{mode}, scales {scales}, flip {"on" if self.flip else "off"}{size}'

  def to_json(self) -> dict:
    return {'mode': self.mode, 'window_size': _size_or_none(self.window),
            'window_stride': _size_or_none(self.stride), 'scales': list(self.scales),
            'flip': self.flip, 'input_size': _size_or_none(self.input_size)}


def _size_or_none(size):
  return None if size is None else list(size)
