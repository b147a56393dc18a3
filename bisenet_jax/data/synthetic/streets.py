"""Procedural street scenes in the official Cityscapes layout, labelled with real labelIds.

Each frame is drawn back to front: sky, buildings with windows, an occasional fence, terrain,
a road trapezoid towards a vanishing point with sidewalks on both sides, trees, poles carrying
traffic signs or traffic lights, cars, pedestrians, and the ego vehicle's bonnet at the bottom.
Twelve of the 19 evaluated classes appear. Every class keeps a distinctive colour family and
texture (plus per-object jitter and per-pixel noise), so that a small network learns it in
minutes; objects shrink with distance, which gives the scale variety the random resize expects.

Labels are real labelIds (``cityscapesscripts``), including ids that map to the ignore label
('ego vehicle', 'static'), and files use the official names, so ``CityscapesFolder`` reads the
result exactly as it reads Cityscapes.
"""

import dataclasses
import pathlib

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

from bisenet_jax.data.synthetic import cache
from bisenet_jax.data.synthetic.canvas import Canvas, add_texture

# Bump whenever the drawing changes, so that cached copies are regenerated.
GENERATOR_VERSION = 1
_CITY = 'synthetic'

# Colours, RGB. A tuple of triples is a family (see canvas.COLOUR_JITTER); a single triple is
# used as it is.
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
# Extra per-pixel noise (standard deviation) that textures some classes.
_TEXTURE_NOISE = {'vegetation': 22.0, 'terrain': 10.0, 'road': 5.0, 'sky': 2.0}
_STREET_LABELS = {name: label.id for name, label in name2label.items()}


@dataclasses.dataclass(frozen=True)
class StreetSpec:
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
    **params: fields of `StreetSpec`.

  Returns:
    pathlib.Path of the dataset root, readable with `CityscapesFolder(root, 'train' | 'val')`.
  """
  return cache.ensure(pathlib.Path(cache_dir) / 'synthetic_cityscapes', StreetSpec(**params),
                 GENERATOR_VERSION, write_synthetic_cityscapes)


def write_synthetic_cityscapes(root, **params):
  """Writes the dataset to `root` (replacing it) in the official Cityscapes layout.

  Files: `leftImg8bit/<split>/synthetic/synthetic_000000_<i:06d>_leftImg8bit.png` and
  `gtFine/<split>/synthetic/synthetic_000000_<i:06d>_gtFine_labelIds.png`, plus `synthetic.json`
  with the parameters. Everything is written into a temporary sibling folder that is renamed
  to `root` at the end, so a reader never sees a partial copy.

  Args:
    root: destination folder.
    **params: fields of `StreetSpec`.

  Returns:
    pathlib.Path of `root`.

  Raises:
    UserError: the files cannot be written there.
  """
  spec = StreetSpec(**params)
  return cache.write_staged(root, GENERATOR_VERSION, spec, _write_street_splits)


def _write_street_splits(root, spec):
  for split_index, (split, count) in enumerate(zip(cache.SPLITS, (spec.num_train, spec.num_val))):
    for index in range(count):
      rng = np.random.default_rng([spec.seed, split_index, index])
      image, label_ids = draw_street_scene(rng, spec.height, spec.width)
      _write_frame(root, split, index, image, label_ids)


def _write_frame(root, split, index, image, label_ids):
  stem = f'{_CITY}_000000_{index:06d}'
  bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  for top, suffix, array in (('leftImg8bit', 'leftImg8bit', bgr),
                             ('gtFine', 'gtFine_labelIds', label_ids)):
    path = root / top / split / _CITY / f'{stem}_{suffix}.png'
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
      raise OSError(f'could not write {path}')


def draw_street_scene(rng, height, width):
  """Draws one frame.

  Args:
    rng: np.random.Generator; the frame is a pure function of its state.
    height: frame height in pixels.
    width: frame width in pixels.

  Returns:
    (image uint8 [height, width, 3] RGB, label uint8 [height, width] Cityscapes labelIds).
  """
  canvas = Canvas(height, width, rng, _STREET_LABELS)
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
  return add_texture(canvas, _TEXTURE_NOISE), canvas.label


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
