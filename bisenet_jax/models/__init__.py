"""Pure architecture: the networks' Flax modules, PyTorch-exact. No task logic here.

``build(spec)`` is the one door: it builds the segmentor that ``specs.NETWORKS`` names for a
``ModelSpec``.
"""

from bisenet_jax.models.segmentor import (Segmentor, abstract_variables, build, classifier_paths,
                                          init_variables)

__all__ = ['Segmentor', 'abstract_variables', 'build', 'classifier_paths', 'init_variables']
