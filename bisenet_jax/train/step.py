"""The pure, jitted training step over a data-parallel Mesh.

The batch is sharded over the mesh's data axis and the state replicated. Under ``jax.jit`` every
reduction over the batch axis is global, so BatchNorm's batch statistics are computed over the
whole global batch: SyncBatchNorm, as the reference trains, with no ``axis_name``. Likewise the
loss is one mean over the global batch's valid pixels (the reference averages per-GPU means,
which only reweights GPUs by their valid-pixel counts).
"""

from __future__ import annotations

import functools

import jax
import optax

from bisenet_jax import parallel
from bisenet_jax.data.normalization import normalize_on_device
from bisenet_jax.train.losses import segmentation_losses
from bisenet_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict, *, learning_rate_fn, dropout_seed: int
               ) -> tuple[TrainState, dict]:
  """One SGD step on ``batch`` as the input pipeline makes it.

  ``batch = {'image': u8[N,H,W,3] RGB, 'label': u8[N,H,W], 'content': i32[N,4]}``: the images
  are normalised here, on the device, with the padding outside 'content' set to 0.0. The
  dropout key is folded from the step number, so a resumed run draws the same masks.
  Returns the new state and scalar metrics: the three losses and their sum, lr, gradient and
  parameter global norms.
  """
  rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  images = normalize_on_device(batch['image'], batch['content'])

  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        rngs={'dropout': rng}, mutable=['batch_stats'])
    losses = segmentation_losses(outputs, batch['label'])
    return losses['loss'], (losses, updates['batch_stats'])

  grads, (losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {
      **losses,
      'lr': learning_rate_fn(state.step),
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(new_state.params),
  }
  return new_state, metrics


def jit_train_step(mesh, *, learning_rate_fn, dropout_seed: int):
  """``train_step`` compiled for ``mesh``: state replicated and donated, batch sharded."""
  step = functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                           dropout_seed=dropout_seed)
  return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                 donate_argnums=(0,))
