"""Embedded demo datasets, generated on the fly: street scenes in the Cityscapes layout
(``streets``) and garden plots in the folder layout with classes of their own (``gardens``).

Both are deterministic given the seed and cached: ``ensure_*`` writes a copy only when its
parameters or the drawing changed (``cache``). To write one to a folder of your choice:

  python -m bisenet_jax.data.synthetic garden data/garden     # or: street data/street

``clips`` makes short videos of a street scene: ``python -m bisenet_jax.data.synthetic --video
clip.mp4`` (or ``clip.y4m``).
"""

from bisenet_jax.data.synthetic.clips import draw_street_clip
from bisenet_jax.data.synthetic.gardens import (GARDEN_CLASSES, draw_garden_plot,
                                                ensure_synthetic_folder, write_synthetic_folder)
from bisenet_jax.data.synthetic.streets import (draw_street_scene, ensure_synthetic_cityscapes,
                                                write_synthetic_cityscapes)

__all__ = ['GARDEN_CLASSES', 'draw_garden_plot', 'draw_street_clip', 'draw_street_scene',
           'ensure_synthetic_cityscapes', 'ensure_synthetic_folder', 'write_synthetic_cityscapes',
           'write_synthetic_folder']
