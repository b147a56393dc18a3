"""The JAX function an export serialises: the model in eval mode behind its ``Interface``."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from bisenet_jax.data.normalization import normalize_on_device
from bisenet_jax.eval import inference
from bisenet_jax.export import Interface


def interface_fn(model, variables: dict, interface: Interface) -> Callable[[jax.Array], jax.Array]:
  """``images -> logits or labels`` as ``interface`` says, the weights closed over (constants).

  float16 runs the convolutions and activations in float16 with float16 weights; the BatchNorm
  statistics stay float32, as ``layers.BatchNorm`` keeps them, and so do inputs and logits.
  """
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  if interface.dtype == 'float16':
    model = model.clone(dtype=jnp.float16, param_dtype=jnp.float16)
    variables['params'] = jax.tree.map(lambda p: p.astype(jnp.float16), variables['params'])

  def logits_fn(images):
    return model.apply(variables, images, train=False).astype(jnp.float32)

  def fn(images):
    if interface.layout == 'nchw':
      images = jnp.transpose(images, (0, 2, 3, 1))
    images = normalize_on_device(images) if interface.preprocessing else images
    if interface.outputs == 'labels':
      return inference.predict_labels(logits_fn, images, interface.input_size)
    logits = logits_fn(images)
    return jnp.transpose(logits, (0, 3, 1, 2)) if interface.layout == 'nchw' else logits

  return fn


def input_spec(interface: Interface) -> jax.ShapeDtypeStruct:
  """The input with a symbolic batch dimension 'N'."""
  dims = ', '.join(str(d) for d in interface.input_shape('N'))
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), jnp.dtype(interface.input_dtype))
