"""A canvas that paints an RGB image and its label map together, and the photographic finish
(lens blur and per-pixel noise) both generators give their drawings."""

import cv2
import numpy as np

# A colour family (a tuple of RGB triples) gives each object one member, jittered by up to this
# much per channel.
COLOUR_JITTER = 16
# Per-pixel noise (standard deviation) everywhere; generators add more on textured classes.
PIXEL_NOISE = 4.0


class Canvas:
  """An RGB image and its label map, painted together by cv2 shape calls.

  `labels` gives the label value of each name a shape is painted with.
  """

  def __init__(self, height, width, rng, labels):
    self.height, self.width, self.rng, self.labels = height, width, rng, labels
    self.image = np.zeros((height, width, 3), np.uint8)
    self.label = np.zeros((height, width), np.uint8)

  def colour(self, family):
    """One colour from `family` (a tuple of RGB triples) with per-object jitter."""
    base = np.array(family[self.rng.integers(len(family))])
    jitter = self.rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
    return tuple(int(c) for c in np.clip(base + jitter, 0, 255))

  def rect(self, x0, y0, x1, y1, colour, name=None):
    """Fills the rectangle in the image and, when `name` is given, in the label map."""
    self._paint(lambda array, value: cv2.rectangle(
        array, (int(x0), int(y0)), (int(x1), int(y1)), value, -1), colour, name)

  def poly(self, points, colour, name=None):
    points = np.round(np.array(points)).astype(np.int32)
    self._paint(lambda array, value: cv2.fillPoly(array, [points], value), colour, name)

  def circle(self, x, y, radius, colour, name=None):
    self._paint(lambda array, value: cv2.circle(
        array, (int(x), int(y)), max(1, int(radius)), value, -1), colour, name)

  def line(self, x0, y0, x1, y1, colour):
    """A one-pixel line in the image only (the label map keeps what is under it)."""
    cv2.line(self.image, (int(x0), int(y0)), (int(x1), int(y1)), colour, 1)

  def ellipse(self, x, y, half_width, half_height, colour, name=None):
    axes = (max(1, int(half_width)), max(1, int(half_height)))
    self._paint(lambda array, value: cv2.ellipse(
        array, (int(x), int(y)), axes, 0, 0, 360, value, -1), colour, name)

  def _paint(self, draw, colour, name):
    draw(self.image, colour)
    if name is not None:
      draw(self.label, self.labels[name])


def add_texture(canvas, texture_noise):
  """Blurs the drawing like a lens, then adds per-pixel noise, stronger on textured classes.

  Args:
    canvas: the drawn Canvas.
    texture_noise: {label name: noise standard deviation added to PIXEL_NOISE there}.

  Returns:
    uint8 [height, width, 3] RGB.
  """
  image = cv2.GaussianBlur(canvas.image, (3, 3), 0).astype(np.float32)
  sigma = np.full(canvas.label.shape, PIXEL_NOISE, np.float32)
  for name, extra in texture_noise.items():
    sigma[canvas.label == canvas.labels[name]] += extra
  noise = canvas.rng.standard_normal(image.shape, np.float32) * sigma[..., None]
  return np.clip(image + noise, 0, 255).astype(np.uint8)
