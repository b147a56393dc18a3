"""The descriptions every command shares, built once at its edge.

``train.py`` builds them from the ml_collections config (``train.config.train_spec``), the other
commands from their flags (``bisenet_jax.cli``); everything below the edge receives these frozen
objects, never flags or config dicts. Sizes are (height, width) everywhere and written
HEIGHTxWIDTH (``sizes``).

This package imports neither JAX nor Flax, so an exported model runs on ONNX Runtime with the
same descriptions.
"""

from bisenet_jax.specs.classes import MAX_CLASSES, ClassSet, default_palette
from bisenet_jax.specs.data import (KINDS, LAYOUT_FIELDS, RESIZE_TO, SOURCE_KINDS, DataSpec,
                                    DatasetSpec, FolderLayout)
from bisenet_jax.specs.inference import MODES, InferenceSpec
from bisenet_jax.specs.model import DTYPES, HEAD_NAMES, NETWORKS, ModelSpec, Network, network
from bisenet_jax.specs.sizes import SIZE_FORMAT, Size, check_size, format_size, parse_size
from bisenet_jax.specs.training import (PRECISIONS, LossScaleSpec, ObjectiveSpec, OptimizerSpec,
                                        TrainSpec)

__all__ = ['DTYPES', 'HEAD_NAMES', 'KINDS', 'LAYOUT_FIELDS', 'MAX_CLASSES', 'MODES', 'NETWORKS',
           'RESIZE_TO', 'SIZE_FORMAT', 'SOURCE_KINDS', 'ClassSet', 'DataSpec', 'DatasetSpec',
           'FolderLayout', 'InferenceSpec', 'LossScaleSpec', 'ModelSpec', 'Network',
           'ObjectiveSpec', 'OptimizerSpec', 'PRECISIONS', 'Size', 'TrainSpec', 'check_size', 'default_palette',
           'format_size', 'network', 'parse_size']
