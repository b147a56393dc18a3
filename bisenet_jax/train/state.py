"""TrainState (params, batch_stats, opt_state, step; EMA and loss scale when on) and its creation,
replicated over a Mesh."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax.training import train_state
from jax.sharding import Mesh

from bisenet_jax import models, parallel
from bisenet_jax.specs import LossScaleSpec
from bisenet_jax.train.loss_scale import LossScale


class TrainState(train_state.TrainState):
  """flax's TrainState plus BatchNorm running statistics, and the options' state.

  Attributes:
    batch_stats: the BatchNorm running statistics.
    ema: None, or ``{'params', 'batch_stats'}``: the exponential moving average of both.
    loss_scale: None, or float16 training's ``LossScale``.
  """
  batch_stats: Any = None
  ema: Any = None
  loss_scale: Any = None

  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array, mesh: Mesh,
                       variables: dict | None = None, *, ema: bool = False,
                       loss_scale: LossScaleSpec | None = None) -> TrainState:
  """Initialises (or wraps the given ``variables``) as a TrainState replicated on ``mesh``.

  Parameters are built directly on the devices by a jitted init with replicated output
  shardings, so no host copy of the model is made. The EMA starts as a copy of the starting
  variables, as the toolbox's copies the freshly built model.
  """

  def init(rng, variables):
    if variables is None:
      variables = models.init_variables(model, rng)
    variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
    return TrainState.create(
        apply_fn=model.apply, params=variables['params'], batch_stats=variables['batch_stats'],
        tx=tx, ema=variables if ema else None,
        loss_scale=None if loss_scale is None else LossScale.create(loss_scale))

  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng, variables)
