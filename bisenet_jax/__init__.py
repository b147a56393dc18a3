"""bisenet-jax: BiSeNetV1 for semantic segmentation in JAX/Flax, faithful to sssegmentation."""

from bisenet_jax import models
from bisenet_jax.checkpoint import load_pretrained

__all__ = ['models', 'load_pretrained']
