"""Garden plots seen from above: a small dataset of the generic folder layout with classes of
its own.

``GARDEN_CLASSES`` (soil, grass, stone, water, flower): JPEG images of two sizes, palette PNG
masks, ignored pixels (a band around each stone, plant labels) and a ``classes.txt`` with
colours, readable with ``folder.SegmentationFolder``.
"""

import dataclasses
import pathlib

import cv2
import numpy as np

from bisenet_jax.data import masks
from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.data.classes import CLASSES_FILE
from bisenet_jax.specs import ClassSet
from bisenet_jax.data.synthetic import cache
from bisenet_jax.data.synthetic.canvas import Canvas, add_texture

# Bump whenever the drawing changes, so that cached copies are regenerated.
GENERATOR_VERSION = 1

# Garden plots, seen from above. Class colours (for masks and legends) are not the colours the
# classes are drawn in: those come from the families below, as in real photographs.
GARDEN_CLASSES = ClassSet(
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
  return cache.ensure(pathlib.Path(cache_dir) / 'synthetic_folder', GardenSpec(**params),
                 GENERATOR_VERSION, write_synthetic_folder)


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
  return cache.write_staged(root, GENERATOR_VERSION, GardenSpec(**params), _write_garden_splits)


def _write_garden_splits(root, spec):
  lines = ['# name R G B: one class per line, in class-index order']
  lines += [f'{name} {r} {g} {b}' for name, (r, g, b) in zip(GARDEN_CLASSES.names,
                                                              GARDEN_CLASSES.palette.tolist())]
  (root / CLASSES_FILE).write_text('\n'.join(lines) + '\n')
  for split_index, (split, count) in enumerate(zip(cache.SPLITS, (spec.num_train, spec.num_val))):
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
  masks.write_index_png(mask_path, mask, GARDEN_CLASSES.palette)


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
  canvas = Canvas(height, width, rng, _GARDEN_LABELS)
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
  return add_texture(canvas, _GARDEN_TEXTURE), canvas.label


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
