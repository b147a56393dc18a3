"""Embedded demo datasets: procedural street scenes in the Cityscapes layout, garden plots in the
folder layout.

Each frame is drawn back to front: sky, buildings with windows, an occasional fence, terrain,
a road trapezoid towards a vanishing point with sidewalks on both sides, trees, poles carrying
traffic signs or traffic lights, cars, pedestrians, and the ego vehicle's bonnet at the bottom.
Twelve of the 19 evaluated classes appear. Every class keeps a distinctive colour family and
texture (plus per-object jitter and per-pixel noise), so that a small network learns it in
minutes; objects shrink with distance, which gives the scale variety the random resize expects.

Labels are real labelIds (`cityscapesscripts`), including ids that map to the ignore label
('ego vehicle', 'static'), and files use the official names, so `CityscapesFolder` reads the
result exactly as it reads Cityscapes.

The garden plots are a small dataset of the generic folder layout (`folder.SegmentationFolder`)
with classes of their own (`GARDEN_CLASSES`: soil, grass, stone, water, flower): JPEG images of
two sizes, palette PNG masks, ignored pixels (a band around each stone, plant labels) and a
`classes.txt` with colours. Both are deterministic given the seed, and are cached: `ensure_*`
regenerates a copy only when its parameters or the drawing change. To write one to a folder of
your choice:

  python -m bisenet_jax.data.synthetic garden data/garden     # or: street data/street
"""

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import tempfile

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

from bisenet_jax.data import folder
from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.errors import UserError

# Bump whenever a drawing changes, so that cached copies are regenerated.
_GENERATOR_VERSION = 1
_GARDEN_VERSION = 1
_MARKER = 'synthetic.json'
_CITY = 'synthetic'
_SPLITS = ('train', 'val')

# Colours, RGB. A tuple of triples is a family: each object picks one member and jitters it by
# up to _COLOUR_JITTER per channel. A single triple is used as it is.
_COLOUR_JITTER = 16
_SKY_ZENITH, _SKY_HORIZON = (96, 146, 210), (172, 202, 232)
_BUILDINGS = ((112, 100, 92), (140, 118, 96), (88, 88, 100), (150, 138, 126), (122, 80, 68))
_WINDOWS = ((40, 48, 60),)
_FENCE, _FENCE_SLAT = ((154, 112, 78),), (84, 60, 40)
_TERRAIN = ((118, 168, 72),)
_SIDEWALK, _TILE_JOINT = ((196, 140, 152),), (150, 104, 116)
_ROAD, _LANE_MARK = ((74, 74, 80),), (224, 224, 220)
_TRUNK, _FOLIAGE = ((84, 62, 40),), ((44, 104, 38), (62, 120, 40))
_POLE, _SIGN = ((160, 160, 168),), ((232, 204, 24),)
_LIGHT_BOX, _LAMPS = (36, 36, 36), ((230, 40, 30), (250, 170, 30), (20, 220, 70))
_CARS = ((22, 32, 120), (40, 62, 160), (12, 14, 64), (58, 84, 140))
_CAR_WINDOWS, _WHEEL = ((140, 172, 204),), (24, 24, 24)
_JACKETS = ((200, 30, 50), (176, 36, 120), (222, 64, 40))
_TROUSERS, _SKIN = (40, 40, 62), ((222, 180, 150),)
_LITTER_BIN, _BONNET = (70, 90, 70), (28, 28, 34)
# Per-pixel noise (standard deviation) everywhere, and the extra that textures some classes.
_PIXEL_NOISE = 4.0
_TEXTURE_NOISE = {'vegetation': 22.0, 'terrain': 10.0, 'road': 5.0, 'sky': 2.0}
_STREET_LABELS = {name: label.id for name, label in name2label.items()}


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What to generate; every field changes the data, so all of them go into the marker file.

  Attributes:
    num_train: frames in the 'train' split.
    num_val: frames in the 'val' split.
    height: frame height in pixels.
    width: frame width in pixels.
    seed: base seed; frame i of a split is drawn from (seed, split, i).
  """
  num_train: int = 200
  num_val: int = 50
  height: int = 256
  width: int = 512
  seed: int = 0


def ensure_synthetic_cityscapes(cache_dir, **params):
  """Returns the root of a complete synthetic dataset under `cache_dir`, generating it if needed.

  An existing copy is reused when its marker file matches `params` (and the generator
  version); otherwise it is regenerated in place.

  Args:
    cache_dir: folder that holds the dataset (as `<cache_dir>/synthetic_cityscapes`).
    **params: fields of `SyntheticSpec`.

  Returns:
    pathlib.Path of the dataset root, readable with `CityscapesFolder(root, 'train' | 'val')`.
  """
  return _ensure(pathlib.Path(cache_dir) / 'synthetic_cityscapes', SyntheticSpec(**params),
                 _GENERATOR_VERSION, write_synthetic_cityscapes)


def write_synthetic_cityscapes(root, **params):
  """Writes the dataset to `root` (replacing it) in the official Cityscapes layout.

  Files: `leftImg8bit/<split>/synthetic/synthetic_000000_<i:06d>_leftImg8bit.png` and
  `gtFine/<split>/synthetic/synthetic_000000_<i:06d>_gtFine_labelIds.png`, plus `synthetic.json`
  with the parameters. Everything is written into a temporary sibling folder that is renamed
  to `root` at the end, so a reader never sees a partial copy.

  Args:
    root: destination folder.
    **params: fields of `SyntheticSpec`.

  Returns:
    pathlib.Path of `root`.

  Raises:
    UserError: the files cannot be written there.
  """
  spec = SyntheticSpec(**params)
  return _write_staged(root, _GENERATOR_VERSION, spec, _write_street_splits)


def _ensure(root, spec, version, write):
  """Returns `root`, first writing it with `write(root, **spec)` unless its marker matches."""
  if _read_marker(root) != _marker(version, spec):
    write(root, **dataclasses.asdict(spec))
  return root


def _write_staged(root, version, spec, write_splits):
  """Writes a dataset with `write_splits(staging, spec)`, then its marker, and renames it to `root`.

  Everything goes into a temporary sibling folder first, so a reader never sees a partial copy,
  and the marker is written last, so its presence means complete.

  Raises:
    UserError: the files cannot be written there.
  """
  root = pathlib.Path(root)
  try:
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{root.name}.', dir=root.parent))
    try:
      write_splits(staging, spec)
      (staging / _MARKER).write_text(json.dumps(_marker(version, spec), indent=2))
      _replace_dir(staging, root)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  except OSError as error:
    raise UserError(f'Cannot write the demo dataset to {root} ({error}): '
                    'choose a writable cache folder') from error
  return root


def _write_street_splits(root, spec):
  for split_index, (split, count) in enumerate(zip(_SPLITS, (spec.num_train, spec.num_val))):
    for index in range(count):
      rng = np.random.default_rng([spec.seed, split_index, index])
      image, label_ids = draw_street_scene(rng, spec.height, spec.width)
      _write_frame(root, split, index, image, label_ids)


def _marker(version, spec):
  return {'generator_version': version, **dataclasses.asdict(spec)}


def _read_marker(root):
  try:
    return json.loads((root / _MARKER).read_text())
  except (OSError, ValueError):
    return None


def _write_frame(root, split, index, image, label_ids):
  stem = f'{_CITY}_000000_{index:06d}'
  bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  for top, suffix, array in (('leftImg8bit', 'leftImg8bit', bgr),
                             ('gtFine', 'gtFine_labelIds', label_ids)):
    path = root / top / split / _CITY / f'{stem}_{suffix}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
      raise OSError(f'could not write {path}')


def _replace_dir(source, destination):
  """Renames `source` to `destination`; an old `destination` is moved aside first, then deleted."""
  if destination.exists():
    old = destination.with_name(f'.{destination.name}.old.{os.getpid()}')
    os.rename(destination, old)
    os.rename(source, destination)
    shutil.rmtree(old)
  else:
    os.rename(source, destination)


class _Canvas:
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
    jitter = self.rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3)
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


def draw_street_scene(rng, height, width):
  """Draws one frame.

  Args:
    rng: np.random.Generator; the frame is a pure function of its state.
    height: frame height in pixels.
    width: frame width in pixels.

  Returns:
    (image uint8 [height, width, 3] RGB, label uint8 [height, width] Cityscapes labelIds).
  """
  canvas = _Canvas(height, width, rng, _STREET_LABELS)
  horizon = height * rng.uniform(0.42, 0.52)
  vanish_x = width * rng.uniform(0.35, 0.65)
  _draw_sky(canvas, horizon)
  _draw_buildings(canvas, horizon)
  if rng.random() < 0.5:
    _draw_fence(canvas, horizon)
  road = _draw_ground(canvas, horizon, vanish_x)
  for _ in range(rng.integers(0, 4)):
    _draw_tree(canvas, horizon)
  for depth in np.sort(rng.uniform(0.15, 0.9, rng.integers(2, 6))):
    _draw_pole(canvas, road, depth)
  for depth in np.sort(rng.uniform(0.25, 0.95, rng.integers(1, 5))):
    _draw_car(canvas, road, depth)
  for depth in np.sort(rng.uniform(0.2, 0.95, rng.integers(1, 5))):
    _draw_person(canvas, road, depth)
  _draw_ego_vehicle(canvas)
  return _add_texture(canvas, _TEXTURE_NOISE), canvas.label


def _draw_sky(canvas, horizon):
  """A vertical blue gradient over the whole frame; everything else is drawn over it."""
  fraction = np.minimum(np.arange(canvas.height) / horizon, 1.0)[:, None, None]
  top, bottom = np.array(_SKY_ZENITH), np.array(_SKY_HORIZON)
  canvas.image[:] = (top + (bottom - top) * fraction).astype(np.uint8)
  canvas.label[:] = name2label['sky'].id


def _draw_buildings(canvas, horizon):
  """Blocks of random width and height standing on the horizon, each with a grid of windows."""
  x = -canvas.rng.uniform(0, 0.1) * canvas.width
  while x < canvas.width:
    block_width = canvas.width * canvas.rng.uniform(0.08, 0.22)
    if canvas.rng.random() < 0.85:  # otherwise leave a gap that shows the sky
      top = canvas.height * canvas.rng.uniform(0.04, 0.3)
      colour = canvas.colour(_BUILDINGS)
      canvas.rect(x, top, x + block_width, horizon + 2, colour, 'building')
      _draw_windows(canvas, x, top, x + block_width, horizon)
    x += block_width


def _draw_windows(canvas, x0, y0, x1, y1):
  """Dark window panes on a building; they stay labelled 'building'."""
  step = max(4, canvas.width // 48)
  pane = canvas.colour(_WINDOWS)
  for y in np.arange(y0 + step / 2, y1 - step, step):
    for x in np.arange(x0 + step / 2, x1 - step / 2, step):
      canvas.rect(x, y, x + step / 2, y + step / 2, pane)


def _draw_fence(canvas, horizon):
  """A wooden fence in front of the buildings on one stretch of the horizon, with dark slats."""
  x0 = canvas.width * canvas.rng.uniform(0.0, 0.6)
  x1 = x0 + canvas.width * canvas.rng.uniform(0.2, 0.45)
  top = horizon - canvas.height * canvas.rng.uniform(0.07, 0.13)
  canvas.rect(x0, top, x1, horizon + 2, canvas.colour(_FENCE), 'fence')
  for x in np.arange(x0, x1, max(3, canvas.width // 100)):
    canvas.line(x, top, x, horizon + 2, _FENCE_SLAT)


class _Road:
  """Where the road and the sidewalks are: edges are straight lines to the vanishing point."""

  def __init__(self, horizon, vanish_x, height, half_width, sidewalk_width):
    self.horizon, self.vanish_x, self.height = horizon, vanish_x, height
    self.half_width, self.sidewalk_width = half_width, sidewalk_width

  def y_at(self, depth):
    """Image row at `depth` (0 = horizon, 1 = bottom edge)."""
    return self.horizon + depth * (self.height - self.horizon)

  def road_edges(self, depth):
    spread = self.half_width * depth
    return self.vanish_x - spread, self.vanish_x + spread

  def sidewalk_x(self, depth, side, position):
    """x on the sidewalk on `side` (-1 left, +1 right), `position` 0 at the kerb, 1 outside."""
    kerb = self.road_edges(depth)[(side + 1) // 2]
    return kerb + side * position * self.sidewalk_width * depth


def _draw_ground(canvas, horizon, vanish_x):
  """Terrain below the horizon, then the road with lane marks and the two sidewalks with tiles."""
  rng, height, width = canvas.rng, canvas.height, canvas.width
  road = _Road(horizon, vanish_x, height, half_width=width * rng.uniform(0.45, 0.8),
               sidewalk_width=width * rng.uniform(0.2, 0.35))
  canvas.rect(0, horizon, width, height, canvas.colour(_TERRAIN), 'terrain')
  for side in (-1, 1):
    far, near = road.sidewalk_x(0, side, 1), road.sidewalk_x(1, side, 1)
    kerb_far, kerb_near = road.sidewalk_x(0, side, 0), road.sidewalk_x(1, side, 0)
    canvas.poly([(kerb_far, horizon), (far, horizon), (near, height), (kerb_near, height)],
                canvas.colour(_SIDEWALK), 'sidewalk')
  left, right = road.road_edges(1)
  canvas.poly([(vanish_x - 1, horizon), (vanish_x + 1, horizon), (right, height), (left, height)],
              canvas.colour(_ROAD), 'road')
  _draw_lane_marks(canvas, road)
  _draw_tile_lines(canvas, road)
  return road


def _draw_lane_marks(canvas, road):
  """White dashes along the road's centre line (labelled 'road')."""
  for start in np.arange(0.05, 1.0, 0.16):
    depths = (start, start + 0.08)
    widths = [max(1.0, canvas.width * 0.006 * d) for d in depths]
    ys = [road.y_at(d) for d in depths]
    canvas.poly([(road.vanish_x - widths[0], ys[0]), (road.vanish_x + widths[0], ys[0]),
                 (road.vanish_x + widths[1], ys[1]), (road.vanish_x - widths[1], ys[1])],
                _LANE_MARK)


def _draw_tile_lines(canvas, road):
  """Darker joints across both sidewalks, closer together with distance (labelled 'sidewalk')."""
  for depth in np.geomspace(0.08, 1.0, 12):
    y = int(road.y_at(depth))
    for side in (-1, 1):
      x0, x1 = road.sidewalk_x(depth, side, 0), road.sidewalk_x(depth, side, 1)
      canvas.line(x0, y, x1, y, _TILE_JOINT)


def _draw_tree(canvas, horizon):
  """A trunk and a cluster of textured green discs ('vegetation', trunk included)."""
  rng, height = canvas.rng, canvas.height
  x = canvas.width * rng.uniform(0.0, 1.0)
  base = horizon + height * rng.uniform(0.0, 0.08)
  radius = height * rng.uniform(0.06, 0.12)
  crown_y = base - height * rng.uniform(0.15, 0.3)
  canvas.rect(x - radius / 6, crown_y, x + radius / 6, base, canvas.colour(_TRUNK), 'vegetation')
  green = canvas.colour(_FOLIAGE)
  for _ in range(rng.integers(3, 6)):
    canvas.circle(x + rng.uniform(-1, 1) * radius, crown_y + rng.uniform(-0.6, 0.4) * radius,
                  radius * rng.uniform(0.6, 1.0), green, 'vegetation')


def _draw_pole(canvas, road, depth):
  """A grey pole on a sidewalk carrying a traffic sign (yellow) or a traffic light (dark box)."""
  rng = canvas.rng
  side = 1 if rng.random() < 0.5 else -1
  x, base = road.sidewalk_x(depth, side, rng.uniform(0.3, 0.9)), road.y_at(depth)
  top = base - canvas.height * 0.55 * depth - 6
  half = max(1.5, canvas.width * 0.018 * depth)
  canvas.rect(x - half, top, x + half, base, canvas.colour(_POLE), 'pole')
  size = max(3.0, canvas.width * 0.045 * depth)
  if rng.random() < 0.5:
    canvas.rect(x - size, top - 2 * size, x + size, top, canvas.colour(_SIGN), 'traffic sign')
  else:
    canvas.rect(x - size * 0.7, top - 3 * size, x + size * 0.7, top, _LIGHT_BOX, 'traffic light')
    canvas.circle(x, top - size * (0.5 + rng.integers(3)), size * 0.45, canvas.colour(_LAMPS),
                  'traffic light')


def _draw_car(canvas, road, depth):
  """A blue-family body with light windows and dark wheels on the road (all 'car')."""
  rng = canvas.rng
  left, right = road.road_edges(depth)
  car_width = canvas.width * 0.28 * depth
  x0 = rng.uniform(left, max(left, right - car_width))
  bottom = road.y_at(depth)
  body_top = bottom - car_width * 0.32
  canvas.rect(x0, body_top, x0 + car_width, bottom - car_width * 0.06, canvas.colour(_CARS), 'car')
  roof = body_top - car_width * 0.16
  canvas.poly([(x0 + car_width * 0.18, body_top), (x0 + car_width * 0.3, roof),
               (x0 + car_width * 0.72, roof), (x0 + car_width * 0.84, body_top)],
              canvas.colour(_CAR_WINDOWS), 'car')
  for wheel_x in (x0 + car_width * 0.2, x0 + car_width * 0.8):
    canvas.circle(wheel_x, bottom - car_width * 0.08, car_width * 0.09, _WHEEL, 'car')


def _draw_person(canvas, road, depth):
  """A pedestrian on a sidewalk: dark legs, a red-family jacket and a head (all 'person')."""
  rng = canvas.rng
  side = 1 if rng.random() < 0.5 else -1
  x, feet = road.sidewalk_x(depth, side, rng.uniform(0.1, 0.9)), road.y_at(depth)
  tall = canvas.height * 0.4 * depth + 4
  half = tall * 0.13
  canvas.rect(x - half * 0.8, feet - tall * 0.45, x + half * 0.8, feet, _TROUSERS, 'person')
  canvas.rect(x - half, feet - tall * 0.85, x + half, feet - tall * 0.42, canvas.colour(_JACKETS),
              'person')
  canvas.circle(x, feet - tall * 0.92, tall * 0.08, canvas.colour(_SKIN), 'person')
  if rng.random() < 0.3:  # a litter bin next to them: 'static', which maps to the ignore label
    canvas.rect(x + half * 2, feet - tall * 0.3, x + half * 3.2, feet, _LITTER_BIN, 'static')


def _draw_ego_vehicle(canvas):
  """The bonnet along the bottom edge, labelled 'ego vehicle' (ignored in training and eval)."""
  rise = canvas.height * 0.05
  canvas.ellipse(canvas.width / 2, canvas.height + rise / 2, canvas.width * 0.7, rise * 1.5,
                 _BONNET, 'ego vehicle')


def _add_texture(canvas, texture_noise):
  """Blurs the drawing like a lens, then adds per-pixel noise, stronger on textured classes.

  Args:
    canvas: the drawn _Canvas.
    texture_noise: {label name: noise standard deviation added to _PIXEL_NOISE there}.

  Returns:
    uint8 [height, width, 3] RGB.
  """
  image = cv2.GaussianBlur(canvas.image, (3, 3), 0).astype(np.float32)
  sigma = np.full(canvas.label.shape, _PIXEL_NOISE, np.float32)
  for name, extra in texture_noise.items():
    sigma[canvas.label == canvas.labels[name]] += extra
  noise = canvas.rng.standard_normal(image.shape, np.float32) * sigma[..., None]
  return np.clip(image + noise, 0, 255).astype(np.uint8)


# Garden plots, seen from above. Class colours (for masks and legends) are not the colours the
# classes are drawn in: those come from the families below, as in real photographs.
GARDEN_CLASSES = folder.ClassSet(
    ('soil', 'grass', 'stone', 'water', 'flower'),
    [(140, 90, 50), (80, 180, 60), (160, 160, 170), (40, 110, 220), (240, 80, 200)])
_GARDEN_LABELS = {name: index for index, name in enumerate(GARDEN_CLASSES.names)}
_GARDEN_LABELS['ignore'] = IGNORE_LABEL
_SOIL, _SOIL_GRAIN = ((112, 78, 50), (128, 90, 58), (98, 70, 52)), (70, 50, 36)
_GRASS, _GRASS_BLADE = ((62, 132, 44), (80, 150, 52), (70, 120, 40)), (36, 84, 28)
_STONE = ((150, 150, 156), (128, 126, 132), (172, 168, 160))
_WATER, _RIPPLE = ((44, 92, 172), (36, 80, 150), (54, 104, 180)), (104, 150, 214)
_PETALS, _FLOWER_HEART = ((222, 40, 140), (240, 212, 40), (246, 244, 240)), (250, 190, 30)
_TAG, _TAG_TEXT = (236, 236, 228), (30, 30, 30)
_GARDEN_TEXTURE = {'soil': 10.0, 'grass': 20.0, 'water': 1.0}
# Where each size of frame goes: the first half of a split is wide, the rest tall.
_GARDEN_SHAPES = ('wide', 'tall')
_JPEG_QUALITY = 92


@dataclasses.dataclass(frozen=True)
class GardenSpec:
  """What to generate; every field changes the data, so all of them go into the marker file.

  Attributes:
    num_train: frames in the 'train' split.
    num_val: frames in the 'val' split.
    height: height of the wide frames (the width of the tall ones), in pixels.
    width: width of the wide frames (the height of the tall ones), in pixels.
    seed: base seed; frame i of a split is drawn from (seed, split, i).
  """
  num_train: int = 160
  num_val: int = 40
  height: int = 192
  width: int = 256
  seed: int = 0


def ensure_synthetic_folder(cache_dir, **params):
  """Returns the root of a complete garden dataset under `cache_dir`, generating it if needed.

  An existing copy is reused when its marker file matches `params` (and the generator
  version); otherwise it is regenerated in place.

  Args:
    cache_dir: folder that holds the dataset (as `<cache_dir>/synthetic_folder`).
    **params: fields of `GardenSpec`.

  Returns:
    pathlib.Path of the dataset root, readable with `folder.SegmentationFolder(root, split)`.
  """
  return _ensure(pathlib.Path(cache_dir) / 'synthetic_folder', GardenSpec(**params),
                 _GARDEN_VERSION, write_synthetic_folder)


def write_synthetic_folder(root, **params):
  """Writes the garden dataset to `root` (replacing it) in the generic folder layout.

  Files: `classes.txt` (the five classes with their colours), for each split
  `images/<split>/<wide|tall>/<i:04d>.jpg` (wide frames are height x width, tall ones
  width x height) and `masks/<split>/<wide|tall>/<i:04d>.png` (palette PNGs: class indices,
  255 = ignore, coloured with the class colours), plus `synthetic.json` with the parameters.
  Written like `write_synthetic_cityscapes`, so a reader never sees a partial copy.

  Args:
    root: destination folder.
    **params: fields of `GardenSpec`.

  Returns:
    pathlib.Path of `root`.

  Raises:
    UserError: the files cannot be written there.
  """
  return _write_staged(root, _GARDEN_VERSION, GardenSpec(**params), _write_garden_splits)


def _write_garden_splits(root, spec):
  lines = ['# name R G B: one class per line, in class-index order']
  lines += [f'{name} {r} {g} {b}' for name, (r, g, b) in zip(GARDEN_CLASSES.names,
                                                              GARDEN_CLASSES.palette.tolist())]
  (root / folder.CLASSES_FILE).write_text('\n'.join(lines) + '\n')
  for split_index, (split, count) in enumerate(zip(_SPLITS, (spec.num_train, spec.num_val))):
    for index in range(count):
      shape = _GARDEN_SHAPES[2 * index // max(count, 1)]
      size = (spec.height, spec.width) if shape == 'wide' else (spec.width, spec.height)
      image, mask = draw_garden_plot(np.random.default_rng([spec.seed, split_index, index]), *size)
      name = f'{split}/{shape}/{index:04d}'
      _write_garden_frame(root, name, image, mask)


def _write_garden_frame(root, name, image, mask):
  image_path, mask_path = root / 'images' / f'{name}.jpg', root / 'masks' / f'{name}.png'
  for path in (image_path, mask_path):
    path.parent.mkdir(parents=True, exist_ok=True)
  bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  if not cv2.imwrite(str(image_path), bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
    raise OSError(f'could not write {image_path}')
  folder.write_index_png(mask_path, mask, GARDEN_CLASSES.palette)


def draw_garden_plot(rng, height, width):
  """Draws one garden plot from above.

  Bare soil with grass patches, ponds with ripples, stones (each ringed by a thin band of
  ignored pixels, as VOC marks object edges), clusters of flowers, and now and then a plant
  label (ignored: it is none of the classes). Every class keeps its own colour family and
  texture, with per-object jitter and per-pixel noise.

  Args:
    rng: np.random.Generator; the frame is a pure function of its state.
    height: frame height in pixels.
    width: frame width in pixels.

  Returns:
    (image uint8 [height, width, 3] RGB, mask uint8 [height, width] of GARDEN_CLASSES indices
    with IGNORE_LABEL for ignored pixels).
  """
  canvas = _Canvas(height, width, rng, _GARDEN_LABELS)
  scale = min(height, width)
  canvas.rect(0, 0, width, height, canvas.colour(_SOIL), 'soil')
  for _ in range(rng.integers(scale // 6, scale // 3)):  # darker grains in the soil
    canvas.circle(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(1, 2.5), _SOIL_GRAIN)
  for _ in range(rng.integers(1, 3)):
    _draw_pond(canvas, scale)
  for _ in range(rng.integers(2, 6)):
    _draw_grass_patch(canvas, scale)
  for _ in range(rng.integers(2, 6)):
    _draw_stone(canvas, scale)
  for _ in range(rng.integers(2, 6)):
    _draw_flowers(canvas, scale)
  if rng.random() < 0.4:
    _draw_tag(canvas, scale)
  return _add_texture(canvas, _GARDEN_TEXTURE), canvas.label


def _random_point(canvas):
  return canvas.rng.uniform(0, canvas.width), canvas.rng.uniform(0, canvas.height)


def _draw_pond(canvas, scale):
  """A smooth blue ellipse with lighter ripple arcs (all 'water')."""
  rng = canvas.rng
  x, y = _random_point(canvas)
  half_width, half_height = scale * rng.uniform(0.15, 0.35), scale * rng.uniform(0.1, 0.25)
  canvas.ellipse(x, y, half_width, half_height, canvas.colour(_WATER), 'water')
  for fraction in (0.35, 0.6, 0.85)[:rng.integers(1, 4)]:
    axes = (max(1, int(half_width * fraction)), max(1, int(half_height * fraction)))
    start = int(rng.integers(0, 180))
    cv2.ellipse(canvas.image, (int(x), int(y)), axes, 0, start, start + 120, _RIPPLE, 1)


def _draw_grass_patch(canvas, scale):
  """Overlapping green ellipses with short dark blades drawn over them (all 'grass')."""
  rng = canvas.rng
  x, y = _random_point(canvas)
  green = canvas.colour(_GRASS)
  for _ in range(rng.integers(2, 5)):
    canvas.ellipse(x + scale * rng.uniform(-0.12, 0.12), y + scale * rng.uniform(-0.12, 0.12),
                   scale * rng.uniform(0.08, 0.2), scale * rng.uniform(0.08, 0.2), green, 'grass')
  for _ in range(rng.integers(10, 25)):
    bx, by = x + scale * rng.uniform(-0.15, 0.15), y + scale * rng.uniform(-0.15, 0.15)
    if canvas.label[int(np.clip(by, 0, canvas.height - 1)),
                    int(np.clip(bx, 0, canvas.width - 1))] == _GARDEN_LABELS['grass']:
      canvas.line(bx, by, bx + rng.uniform(-2, 2), by - rng.uniform(3, 6), _GRASS_BLADE)


def _draw_stone(canvas, scale):
  """A grey irregular polygon, shaded lighter towards the top; its rim is ignored."""
  rng = canvas.rng
  x, y = _random_point(canvas)
  radius = scale * rng.uniform(0.09, 0.2)
  angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(5, 9)))
  radii = radius * rng.uniform(0.7, 1.0, angles.size)
  points = np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], axis=1)
  grey = canvas.colour(_STONE)
  canvas.poly(points, grey, 'stone')
  highlight = tuple(min(255, c + 24) for c in grey)
  canvas.ellipse(x - radius * 0.2, y - radius * 0.3, radius * 0.35, radius * 0.2, highlight,
                 'stone')
  cv2.polylines(canvas.label, [np.round(points).astype(np.int32)], True, IGNORE_LABEL, 2)


def _draw_flowers(canvas, scale):
  """A cluster of small discs of one petal colour, each with a yellow heart (all 'flower')."""
  rng = canvas.rng
  x, y = _random_point(canvas)
  petals = canvas.colour(_PETALS)
  for _ in range(rng.integers(4, 10)):
    fx, fy = x + scale * rng.uniform(-0.1, 0.1), y + scale * rng.uniform(-0.1, 0.1)
    radius = scale * rng.uniform(0.025, 0.05)
    canvas.circle(fx, fy, radius, petals, 'flower')
    canvas.circle(fx, fy, radius * 0.35, _FLOWER_HEART, 'flower')


def _draw_tag(canvas, scale):
  """A white plant label with lines of dark text: none of the classes, so ignored."""
  rng = canvas.rng
  x, y = _random_point(canvas)
  tag_width, tag_height = scale * rng.uniform(0.1, 0.16), scale * rng.uniform(0.05, 0.08)
  canvas.rect(x, y, x + tag_width, y + tag_height, _TAG, 'ignore')
  for line_y in np.linspace(y + tag_height * 0.3, y + tag_height * 0.7, 2):
    canvas.line(x + tag_width * 0.15, line_y, x + tag_width * 0.85, line_y, _TAG_TEXT)


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.data.synthetic',
                                   description='Writes a synthetic demo dataset to a folder.')
  parser.add_argument('kind', choices=['garden', 'street'],
                      help='garden: the folder layout, 5 classes of its own; street: the '
                      'Cityscapes layout')
  parser.add_argument('output', help='the dataset root to write (replaced if it exists)')
  parser.add_argument('--num-train', type=int, help='frames in the train split')
  parser.add_argument('--num-val', type=int, help='frames in the val split')
  args = parser.parse_args(argv)
  counts = {key: value for key, value in (('num_train', args.num_train),
                                          ('num_val', args.num_val)) if value is not None}
  write = write_synthetic_folder if args.kind == 'garden' else write_synthetic_cityscapes
  root = write(args.output, **counts)
  print(f'wrote the {args.kind} dataset to {root}')


if __name__ == '__main__':
  from bisenet_jax.cli import user_errors_exit
  user_errors_exit(main)()
