"""bisenet-jax: real-time semantic segmentation (BiSeNetV1, BiSeNetV2, Fast-SCNN) in JAX/Flax,
faithful to sssegmentation.

``Segmenter`` (``bisenet_jax.segmenter``) is the way to run a model on images. It, ``models`` and
``load_pretrained`` are imported on first use, so that the parts that run without JAX (ONNX
Runtime prediction of an exported model) can import this package.
"""

import importlib

__all__ = ['Segmenter', 'models', 'load_pretrained']


def __getattr__(name):
  if name == 'Segmenter':
    return importlib.import_module('bisenet_jax.segmenter').Segmenter
  if name == 'models':
    return importlib.import_module('bisenet_jax.models')
  if name == 'load_pretrained':
    return importlib.import_module('bisenet_jax.checkpoint').load_pretrained
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
