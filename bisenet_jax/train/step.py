"""The pure, jitted training step over a data-parallel Mesh.

The batch is sharded over the mesh's data axis and the state replicated. Under ``jax.jit`` every
reduction over the batch axis is global, so BatchNorm's batch statistics are computed over the
whole global batch: SyncBatchNorm, as the reference trains, with no ``axis_name``. The losses are
the reference's under DistributedDataParallel: each of its GPUs' images scored alone, the GPUs'
losses averaged (``losses.make_objective``), whatever devices run the step.

The toolbox's options (docs/reference.md §9) enter here: the losses of ``objective``,
gradient accumulation over micro-batches, float16 loss scaling with skipped steps, and the EMA
of the variables. Without them the step is the reference recipe's, bit for bit.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from bisenet_jax import parallel
from bisenet_jax.data.normalization import normalize_on_device
from bisenet_jax.train.loss_scale import all_finite
from bisenet_jax.train.state import TrainState


def train_step(state: TrainState, batch: dict, *, learning_rate_fn, dropout_seed: int,
               objective: Callable, accumulate_steps: int = 1,
               ema_momentum: float | None = None) -> tuple[TrainState, dict]:
  """One optimizer step on ``batch`` as the input pipeline makes it.

  ``batch = {'image': u8[N,H,W,3] RGB, 'label': u8[N,H,W], 'content': i32[N,4]}``: the images
  are normalised here, on the device, with the padding outside 'content' set to 0.0. The
  dropout key is folded from the step number, so a resumed run draws the same masks.

  Args:
    state: the TrainState; its ``loss_scale`` (float16) and ``ema`` are used when set.
    batch: the step's global batch.
    learning_rate_fn: the schedule, for the metrics.
    dropout_seed: seeds the dropout masks.
    objective: ``(outputs, labels) -> {head: loss, 'loss': total}`` (``losses.make_objective``).
    accumulate_steps: k: the batch is split into k micro-batches (micro-batch i holds rows
      i, i + k, i + 2k, ..., so each device keeps its own rows), run one after the other (their
      BatchNorm statistics are each micro-batch's own, and the running statistics are updated k
      times); their gradients are averaged into one optimizer step.
    ema_momentum: the weight of the new value in the EMA, when ``state.ema`` is kept.

  Returns:
    The new state and scalar metrics: the losses and their sum, lr, gradient and parameter
    global norms; with float16, ``skipped`` (1 when the step's gradients overflowed and it was
    skipped, as GradScaler does) and ``loss_scale``.
  """
  rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)
  images = normalize_on_device(batch['image'], batch['content'])
  scale = None if state.loss_scale is None else state.loss_scale.scale

  def gradients(batch_stats, images, labels, rng):
    def loss_fn(params):
      outputs, updates = state.apply_fn(
          {'params': params, 'batch_stats': batch_stats}, images, train=True,
          rngs={'dropout': rng}, mutable=['batch_stats'])
      losses = objective(outputs, labels)
      scaled = losses['loss'] if scale is None else losses['loss'] * scale
      return scaled, (losses, updates['batch_stats'])

    grads, (losses, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    return grads, losses, batch_stats

  if accumulate_steps == 1:
    grads, losses, batch_stats = gradients(state.batch_stats, images, batch['label'], rng)
  else:
    grads, losses, batch_stats = _accumulated(gradients, state.params, state.batch_stats, images,
                                              batch['label'], rng, accumulate_steps)
  metrics = {}
  if scale is None:
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  else:
    grads = jax.tree.map(lambda g: g / scale, grads)
    finite = all_finite(grads)
    stepped = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # A skipped step keeps parameters and optimizer state; the step count, the lr schedule's
    # own count and the running statistics of its forward pass move on, as in the toolbox.
    new_state = stepped.replace(
        params=optax.tree.where(finite, stepped.params, state.params),
        opt_state=_skipped_or_stepped(finite, stepped.opt_state, state.opt_state),
        loss_scale=state.loss_scale.updated(finite))
    metrics = {'skipped': 1.0 - finite.astype(jnp.float32), 'loss_scale': scale}
  if ema_momentum is not None:
    new_state = new_state.replace(ema=jax.tree.map(
        lambda average, value: average * (1 - ema_momentum) + value * ema_momentum,
        state.ema, new_state.variables()))
  metrics = {
      **losses,
      'lr': learning_rate_fn(state.step),
      'grad_norm': optax.tree.norm(grads),
      'param_norm': optax.tree.norm(new_state.params),
      **metrics,
  }
  return new_state, metrics


def _skipped_or_stepped(finite: jax.Array, stepped, kept):
  """The optimizer state after a step that was applied (``finite``) or skipped.

  A skipped step keeps the momentum but not the schedule's step count: optax's schedule counts
  the updates it has seen (``ScaleByScheduleState.count``), and left behind it would apply the
  lr of an earlier step than ``state.step`` (and the logged lr) for the rest of the run, where
  GradScaler skips ``optimizer.step()`` and the toolbox's scheduler still sets the lr from the
  iteration count.
  """
  def leaf(path, new, old):
    is_count = getattr(path[-1], 'name', None) == 'count'
    return new if is_count else jnp.where(finite, new, old)
  return jax.tree.map_with_path(leaf, stepped, kept)


def _accumulated(gradients, params, batch_stats, images, labels, rng, steps: int):
  """The mean gradients and losses of ``steps`` micro-batches run in turn (``lax.scan``: one
  micro-batch's activations alive at a time)."""

  def micro_batches(array):  # [N, ...] -> [steps, N / steps, ...]; micro-batch i: rows i::steps.
    return jnp.swapaxes(array.reshape(array.shape[0] // steps, steps, *array.shape[1:]), 0, 1)

  def body(carry, micro):
    batch_stats, grad_sum = carry
    index, micro_images, micro_labels = micro
    grads, losses, batch_stats = gradients(batch_stats, micro_images, micro_labels,
                                           jax.random.fold_in(rng, index))
    return (batch_stats, jax.tree.map(jnp.add, grad_sum, grads)), losses

  zeros = jax.tree.map(jnp.zeros_like, params)  # Gradients have the parameters' dtypes.
  (batch_stats, grad_sum), losses = jax.lax.scan(
      body, (batch_stats, zeros), (jnp.arange(steps), micro_batches(images),
                                   micro_batches(labels)))
  mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)  # noqa: E731
  return jax.tree.map(lambda g: g / steps, grad_sum), mean(losses), batch_stats


def jit_train_step(mesh, *, learning_rate_fn, dropout_seed: int, objective: Callable,
                   precision: str = 'highest', **options):
  """``train_step`` compiled for ``mesh``: state replicated and donated, batch sharded.

  ``precision``: of float32 convolutions and matmuls, forward and backward
  (``jax.default_matmul_precision``): 'highest' is full float32, as the reference trains (TF32
  off); 'tensorfloat32' and 'bfloat16' trade accuracy for speed on GPUs and TPUs, as does
  'default', the backend's own choice (TF32 on NVIDIA GPUs since Ampere, one bfloat16 pass on
  TPUs). CPUs compute float32 in full at every setting.
  ``options``: ``accumulate_steps``, ``ema_momentum`` (see ``train_step``).
  """
  def step(state, batch):
    with jax.default_matmul_precision(precision):
      return train_step(state, batch, learning_rate_fn=learning_rate_fn,
                        dropout_seed=dropout_seed, objective=objective, **options)

  return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                 donate_argnums=(0,))
