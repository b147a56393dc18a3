"""TrainState (params, batch_stats, opt_state, step) and its creation, replicated over a Mesh."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax.training import train_state
from jax.sharding import Mesh

from bisenet_jax import models, parallel


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm running statistics."""
  batch_stats: Any = None


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
                       variables: dict | None = None) -> TrainState:
  """Initialises (or wraps the given ``variables``) as a TrainState replicated on ``mesh``.

  Parameters are built directly on the devices by a jitted init with replicated output
  shardings, so no host copy of the model is made.
  """

  def init(rng, variables):
    if variables is None:
      variables = models.init_variables(model, rng)
    return TrainState.create(apply_fn=model.apply, params=variables['params'],
                             batch_stats=variables['batch_stats'], tx=tx)

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng, variables)
