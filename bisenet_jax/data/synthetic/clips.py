"""Short street clips for trying ``predict`` on a video: a car driving into one street scene.

The scene is drawn once (``streets.draw_street_scene``) at the resolution of the closest view;
each frame is a view of it that zooms towards the horizon while the camera turns slowly from
left to right, so consecutive frames differ as a real dashboard camera's do. The bonnet stays
where it is, at the bottom of every frame.
"""

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

from bisenet_jax.data.synthetic.streets import draw_street_scene

# The view's magnification goes from the first to the last value over the clip.
_ZOOM = (1.15, 1.6)
# The point the camera looks at (fractions of the scene's width and height), from the first to
# the last frame; it stays at the same place in the frame. Near the horizon's middle.
_LOOK_X, _LOOK_Y = (0.45, 0.55), 0.47


def draw_street_clip(rng, height, width, frames):
  """Yields ``frames`` uint8 [height, width, 3] RGB frames of one street scene.

  Args:
    rng: np.random.Generator; the clip is a pure function of its state.
    height: frame height in pixels.
    width: frame width in pixels.
    frames: how many frames.
  """
  top = _ZOOM[1]
  scene, labels = draw_street_scene(rng, round(height * top), round(width * top))
  bonnet = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
  bonnet = bonnet == name2label['ego vehicle'].id
  still = cv2.resize(scene, (width, height), interpolation=cv2.INTER_AREA)
  for progress in np.linspace(0.0, 1.0, frames):
    frame = cv2.warpAffine(scene, _view(progress, scene.shape[:2], (height, width)),
                           (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    frame[bonnet] = still[bonnet]
    yield frame


def _view(progress, scene_size, frame_size):
  """The affine map from scene to frame pixels at ``progress`` (0 first frame, 1 last)."""
  zoom = _ZOOM[0] + (_ZOOM[1] - _ZOOM[0]) * progress
  scale = zoom * frame_size[1] / scene_size[1]
  look_x = scene_size[1] * (_LOOK_X[0] + (_LOOK_X[1] - _LOOK_X[0]) * progress)
  look_y = scene_size[0] * _LOOK_Y
  # The looked-at point lands on the frame's (0.5, _LOOK_Y) point.
  return np.array([[scale, 0.0, frame_size[1] * 0.5 - scale * look_x],
                   [0.0, scale, frame_size[0] * _LOOK_Y - scale * look_y]])
