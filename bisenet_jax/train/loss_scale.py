"""Dynamic loss scaling for float16 training, PyTorch GradScaler's rule (docs/reference.md §9.4).

The loss is multiplied by ``scale`` before differentiation, so that small float16 gradients do
not flush to zero; the gradients are divided by it afterwards. A step whose gradients hold an inf
or a NaN is skipped (the parameters and optimizer state stay) and the scale is multiplied by
``backoff_factor``; after ``growth_interval`` finite steps in a row it is multiplied by
``growth_factor``.

flax's ``DynamicScale`` is the obvious library, but it grows the scale one step later than
GradScaler (after ``growth_interval`` finite steps it still keeps the scale, and grows at the
next one) and wraps the gradient computation itself, which leaves no room for summing the
micro-batches of an accumulated step before the one finite check. The rule is four lines.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from bisenet_jax.specs import LossScaleSpec


class LossScale(struct.PyTreeNode):
  """The scale and its count of finite steps in a row; the factors are static settings."""
  scale: jax.Array
  good_steps: jax.Array
  growth_factor: float = struct.field(pytree_node=False, default=2.0)
  backoff_factor: float = struct.field(pytree_node=False, default=0.5)
  growth_interval: int = struct.field(pytree_node=False, default=2000)

  @classmethod
  def create(cls, spec: LossScaleSpec) -> LossScale:
    return cls(jnp.asarray(spec.init_scale, jnp.float32), jnp.asarray(0, jnp.int32),
               spec.growth_factor, spec.backoff_factor, spec.growth_interval)

  def updated(self, finite: jax.Array) -> LossScale:
    """GradScaler's ``update()`` after a step whose unscaled gradients were ``finite``."""
    good = jnp.where(finite, self.good_steps + 1, 0)
    grow = good == self.growth_interval
    scale = jnp.where(finite, jnp.where(grow, self.scale * self.growth_factor, self.scale),
                      self.scale * self.backoff_factor)
    return self.replace(scale=scale, good_steps=jnp.where(grow, 0, good))


def all_finite(tree) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))
