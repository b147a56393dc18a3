"""Pure architecture: BiSeNetV1 + FCN heads in Flax linen, PyTorch-exact. No task logic here."""

from bisenet_jax.models.segmentor import (ARCHS, CLASSIFIERS, FCNBiSeNetV1, abstract_variables,
                                          build_model, init_variables)

__all__ = ['ARCHS', 'CLASSIFIERS', 'FCNBiSeNetV1', 'abstract_variables', 'build_model',
           'init_variables']
