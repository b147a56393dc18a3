"""Pure architecture: BiSeNetV1 + FCN heads in Flax linen, PyTorch-exact. No task logic here."""

from bisenet_jax.models.segmentor import (ARCHS, CLASSIFIERS, FCNBiSeNetV1, build_from_config,
                                          build_model, model_config)

__all__ = ['ARCHS', 'CLASSIFIERS', 'FCNBiSeNetV1', 'build_from_config', 'build_model',
           'model_config']
