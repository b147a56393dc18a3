"""The JAX function behind an exported file: the model in eval mode behind its ``Interface``."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

from bisenet_jax.data.normalization import normalize_on_device
from bisenet_jax.eval import inference
from bisenet_jax.export import OUTPUT_STRIDE, Interface
from bisenet_jax.specs import InferenceSpec


def interface_fn(model, variables: dict, interface: Interface) -> Callable[[jax.Array], jax.Array]:
  """``images -> logits or labels`` as ``interface`` says, the weights closed over (constants).

  With ``interface.any_input_size`` the images may have any size: the network runs at theirs,
  or, if the interface has a fixed size, they are resized to it and the output back to theirs
  (``InferenceSpec.input_size``), which is what an exported ONNX file computes and the reference
  its check compares against. float16 runs the
  convolutions and activations in float16 with float16 weights (StableHLO); the BatchNorm
  statistics stay float32, as ``layers.BatchNorm`` keeps them, and so do inputs and logits.
  """
  if interface.dtype not in ('float32', 'float16'):
    raise ValueError(f'JAX computes float32 or float16, not {interface.dtype}')
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  if interface.dtype == 'float16':
    model = model.clone(dtype=jnp.float16, param_dtype=jnp.float16)
    variables['params'] = jax.tree.map(lambda p: p.astype(jnp.float16), variables['params'])
  spec = InferenceSpec(input_size=interface.input_size if interface.any_input_size else None)

  def logits_fn(images):
    return model.apply(variables, images, train=False).astype(jnp.float32)

  def fn(images):
    if interface.layout == 'nchw':
      images = jnp.transpose(images, (0, 2, 3, 1))
    images = normalize_on_device(images) if interface.preprocessing else images
    height, width = images.shape[1:3]
    if interface.outputs == 'labels':
      return inference.predict_labels(logits_fn, images, (height, width), spec)
    stride_size = (math.ceil(height / OUTPUT_STRIDE), math.ceil(width / OUTPUT_STRIDE))
    logits = inference.segment_logits(logits_fn, images, stride_size, spec)
    return jnp.transpose(logits, (0, 3, 1, 2)) if interface.layout == 'nchw' else logits

  return fn


def network_fn(model, variables: dict, layout: str) -> Callable[[jax.Array], jax.Array]:
  """Normalised float32 images -> float32 logits at stride 8, both in ``layout``: the network an
  ONNX file wraps (``onnx_file.wrap``), the weights closed over."""
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}

  def fn(images):
    if layout == 'nchw':
      images = jnp.transpose(images, (0, 2, 3, 1))
    logits = model.apply(variables, images, train=False).astype(jnp.float32)
    return jnp.transpose(logits, (0, 3, 1, 2)) if layout == 'nchw' else logits

  return fn


def network_interface(interface: Interface) -> Interface:
  """The input ``network_fn`` is traced for: float32 normalised, of the interface's fixed size,
  or of any (symbolic) size when it has none."""
  return dataclasses.replace(interface, preprocessing=False, outputs='logits', dtype='float32',
                             any_input_size=interface.input_size is None)


def input_spec(interface: Interface) -> jax.ShapeDtypeStruct:
  """The input with a symbolic batch dimension 'N', and symbolic 'H' and 'W' where the interface
  takes any size."""
  dims = ', '.join(str(d) for d in interface.input_shape('N'))
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims), jnp.dtype(interface.input_dtype))
