"""``train_and_evaluate(config, workdir)``: the training run, resumable from any interruption.

Everything a run writes lives in ``workdir``: ``checkpoints/<step>/`` (orbax: model variables,
optimizer state, model config, dataset), ``metrics.jsonl`` (one JSON object per logged step;
evaluation rows carry ``miou``) and ``tensorboard/``. Running the same command again in the same
workdir resumes from the newest complete checkpoint: the data stream (a function of the step),
the dropout masks (folded from the step) and the learning rate continue exactly, so a killed
and resumed run produces the same parameters and per-step losses as an uninterrupted one, with
any number of processes and devices.

The config is read once, into a ``specs.TrainSpec`` (``config.train_spec``); the side jobs live
in their own modules: where variables start (``initialization``), checkpoints
(``checkpointing``), what is reported (``metrics_log``) and SIGTERM (``preemption``).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from bisenet_jax import checkpoint, models, parallel
from bisenet_jax.data import pipeline, sources
from bisenet_jax.errors import UserError
from bisenet_jax.eval import evaluator
from bisenet_jax.models import layers
from bisenet_jax.specs import TrainSpec
from bisenet_jax.train import (checkpointing, losses, optim, state as state_lib,
                               step as step_lib)
from bisenet_jax.train.config import train_spec
from bisenet_jax.train.initialization import initial_variables
from bisenet_jax.train.metrics_log import MetricsLog, log
from bisenet_jax.train.preemption import sigterm_requests_stop


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last checkpoint on disk predates it."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes) the run ``config`` describes in ``workdir`` and evaluates it.

  Returns:
    ``{'step', 'miou', 'checkpoint'}`` of the final state.

  Raises:
    UserError: a bad config value, missing data or files (before anything is written).
    parallel.PeerLost: another process of a multi-process run stopped.
  """
  return run(train_spec(config), workdir)


def check_batch_size(spec: TrainSpec, mesh) -> None:
  micro_batch = spec.batch_size // spec.accumulate_steps
  if micro_batch % mesh.size:
    what = (f'config.batch_size={spec.batch_size}' if spec.accumulate_steps == 1 else
            f'the micro-batch of {micro_batch} (config.batch_size={spec.batch_size} / '
            f'config.accumulate_steps={spec.accumulate_steps})')
    raise UserError(f'{what} is not divisible by the {mesh.size} devices; use a multiple of '
                    f'{mesh.size}.')


def check_micro_batch(spec: TrainSpec, model, devices: int) -> None:
  """Refuses micro-batches of one image when a BatchNorm of ``model`` would then normalise a
  single value per channel (one after each global pooling: BiSeNetV1's context path, BiSeNetV2's
  context embedding, Fast-SCNN's pyramid pooling), whose batch variance is 0. PyTorch raises
  "Expected more than 1 value per channel when training" there. Statistics are global over the
  devices (SyncBatchNorm), so it is the micro-batch over every device that counts.
  """
  micro_batch = spec.batch_size // spec.accumulate_steps
  if micro_batch > 1:
    return
  norms = single_value_norms(model, spec.data.crop_size)
  if norms:
    raise UserError(
        f'config.batch_size={spec.batch_size} with config.accumulate_steps='
        f'{spec.accumulate_steps} on {devices} device{"s" * (devices > 1)} trains on one '
        f'image at a time, and {spec.model.name}\'s BatchNorm {norms[0]} (after a global '
        'pooling) then sees one value per channel: raise config.batch_size or lower '
        'config.accumulate_steps to give each micro-batch at least 2 images.')


def single_value_norms(model, size: tuple[int, int]) -> list[str]:
  """The paths of ``model``'s BatchNorms that see one value per channel and image in a training
  forward pass on ``size`` crops, found by tracing it (shapes only, nothing computed)."""
  found = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, layers.BatchNorm) and context.method_name == '__call__':
      x = args[0]
      if x.size == x.shape[0] * x.shape[-1]:
        found.append('/'.join(context.module.path))
    return next_fun(*args, **kwargs)

  def forward(variables, images):
    with nn.intercept_methods(record):
      return model.apply(variables, images, train=True, rngs={'dropout': jax.random.key(0)},
                         mutable=['batch_stats'])

  jax.eval_shape(forward, models.abstract_variables(model),
                 jax.ShapeDtypeStruct((2, *size, 3), jnp.float32))
  return found


def check_precision(spec: TrainSpec, backend: str) -> None:
  if spec.model.dtype == 'float16' and backend == 'tpu':
    raise UserError('config.model.dtype=float16 does not run on TPUs (they compute in '
                    'bfloat16): use --config.model.dtype=bfloat16.')


# Metrics that describe every step, skipped or not.
_OF_EVERY_STEP = ('lr', 'loss_scale')


def mean_metrics(pending: list[dict]) -> dict:
  """Host means of the per-step metrics since the last log; stops on a non-finite loss.

  Steps that float16 loss scaling skipped (their gradients overflowed) are left out of the
  means and counted in ``skipped``; a non-finite loss in any other step stops the run.
  """
  fetched = jax.device_get(pending)
  skipped = [bool(m.get('skipped', 0)) for m in fetched]
  kept = [m for m, skip in zip(fetched, skipped) if not skip]
  losses = np.array([m['loss'] for m in kept])
  if not np.all(np.isfinite(losses)):
    _diverged(losses, len(pending))
  means = {}
  for key in fetched[0]:
    over = fetched if key in _OF_EVERY_STEP else kept
    means[key] = float(np.mean([m[key] for m in over])) if over else float('nan')
  if 'skipped' in fetched[0]:
    means['skipped'] = float(sum(skipped))
  return means


def skips_in_a_row(fetched: list[dict], before: int, limit: int) -> int:
  """The float16 steps skipped in a row up to the newest of ``fetched`` (host metrics), after
  ``before`` of them; stops the run when they reach ``limit``.

  GradScaler's rule keeps lowering the scale while steps overflow, so a long run of skips means
  the gradients are not finite at any scale (a NaN loss, NaN weights): such a run would go on
  to ``total_steps`` with its starting weights.
  """
  streak = before
  for metrics in fetched:
    streak = streak + 1 if metrics['skipped'] else 0
    if streak >= limit:
      raise TrainingDiverged(
          f'the last {streak} steps were all skipped: their float16 gradients were not finite '
          f"even at loss scale {float(metrics['loss_scale']):.3g}; training stopped. Check the "
          'labels, lower --config.optimizer.base_lr or train in --config.model.dtype=bfloat16 '
          f'(config.loss_scale.max_consecutive_skips={limit} sets this limit).')
  return streak


def _diverged(losses: np.ndarray, steps: int):
  raise TrainingDiverged(
      f'the loss became {losses[~np.isfinite(losses)][0]} within the last {steps} steps; '
      'training stopped and the newest checkpoint predates it. Lower '
      '--config.optimizer.base_lr or check the labels.')


def _make_workdir(workdir: str | os.PathLike) -> Path:
  workdir = Path(workdir).expanduser().absolute()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f'Cannot create the workdir {workdir} ({e.strerror}): choose another '
                    '--workdir.') from e
  return workdir


def run(spec: TrainSpec, workdir: str | os.PathLike) -> dict:
  """The run ``spec`` describes; see ``train_and_evaluate``.

  Everything that can fail on the user's input (data, model, starting weights) is checked
  before the checkpoint manager starts its threads; from then on they, the input pipeline and
  the metrics files are closed on every way out.
  """
  mesh = parallel.make_mesh()
  check_batch_size(spec, mesh)
  check_precision(spec, jax.default_backend())
  model = models.build(spec.model)
  check_micro_batch(spec, model, mesh.size)
  train_source, val_source = sources.open_training_sources(spec.data, log=log)
  workdir = _make_workdir(workdir)
  schedule = optim.poly_warmup_schedule(
      spec.optimizer.base_lr, spec.total_steps, spec.optimizer.min_lr, spec.optimizer.power,
      spec.optimizer.warmup_steps, spec.optimizer.warmup_ratio, dtype=spec.model.param_dtype)
  tx = optim.make_optimizer(schedule, spec.optimizer.momentum, spec.optimizer.weight_decay)
  create = lambda variables: state_lib.create_train_state(  # noqa: E731
      model, tx, jax.random.key(spec.seed), mesh, variables,
      ema=spec.ema_momentum is not None, loss_scale=spec.loss_scale)
  resuming = bool(checkpoint.finalized_steps(workdir))
  start = None if resuming else create(initial_variables(spec, model))

  peer_lost = False
  with contextlib.ExitStack() as stack:
    manager = checkpointing.make_manager(workdir, spec.keep_checkpoints)

    @stack.callback
    def close_manager():
      if not peer_lost:  # Finishing a save needs every process: not after one is lost.
        manager.wait_until_finished()
        manager.close()
    if resuming:
      # Every leaf replicated on this run's mesh, whatever layout wrote the checkpoint.
      abstract = jax.tree_util.tree_map(
          lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                            sharding=parallel.replicated(mesh)),
          jax.eval_shape(lambda: create(None)))
      latest = manager.latest_step()
      start = checkpointing.restore(manager, latest, abstract, spec.model)
      log(f'resumed from {manager.directory / str(latest)}')
    data_iterator = pipeline.make_train_iterator(
        train_source, global_batch_size=spec.batch_size, seed=spec.seed,
        crop_size=spec.data.crop_size, resize_to=spec.data.dataset.resize_to,
        scale_range=spec.data.scale_range, start_step=int(start.step),
        worker_count=spec.data.worker_count, threads=spec.data.threads,
        process_index=jax.process_index(),
        process_count=jax.process_count())
    if hasattr(data_iterator, 'close'):  # Worker processes, when there are any.
      stack.callback(data_iterator.close)
    metrics_log = MetricsLog(workdir, resume_step=int(start.step))
    stack.callback(metrics_log.close)
    try:
      summary, scores = _train(spec, model, start, mesh, schedule, data_iterator, val_source,
                               manager, metrics_log, stack)
    except jax.errors.JaxRuntimeError as e:
      if jax.process_count() == 1:
        raise
      # In a multi-process run a failed step is a failed collective, which is what losing a
      # process looks like from the others (gloo, NCCL or the coordination service reports it).
      peer_lost = True
      raise parallel.PeerLost(
          f'process {jax.process_index()} stopped: a step failed ({str(e).splitlines()[0]}), '
          'as it does when it lost another process of this run; the newest complete '
          f'checkpoint is step {manager.latest_step()}: start every process again to resume '
          'from it') from e
  if scores is not None:
    log(f"done: step {summary['step']}, val mIoU {100 * scores['miou']:.2f}%, "
        f"checkpoint {summary['checkpoint']}")
  return summary


def _train(spec: TrainSpec, model, state, mesh, schedule, data_iterator, val_source, manager,
           metrics_log: MetricsLog, stack: contextlib.ExitStack) -> tuple[dict, dict | None]:
  """The loop itself: steps, logging, checkpoints and evaluation, until ``total_steps``.

  Returns the run's summary and the last evaluation's scores (None if there was none).
  """
  train_step = step_lib.jit_train_step(
      mesh, learning_rate_fn=schedule, dropout_seed=spec.seed,
      objective=losses.make_objective(spec.objective),
      accumulate_steps=spec.accumulate_steps,
      ema_momentum=spec.ema_momentum, precision=spec.precision)

  def evaluate(variables) -> dict:
    return evaluator.evaluate(model, variables, val_source, mesh=mesh,
                              resize_to=spec.data.dataset.resize_to,
                              batch_per_device=spec.eval_batch_per_device,
                              precision=spec.precision)

  def run_eval(state) -> dict:
    """The model's scores; with an EMA, the EMA's are evaluated and reported beside them."""
    scores = evaluate(state.variables())
    row = {'miou': scores['miou'], 'aacc': scores['aacc'], 'eval_seconds': scores['seconds']}
    line = (f"step {int(state.step)}: val mIoU {100 * scores['miou']:.2f}%, "
            f"aAcc {100 * scores['aacc']:.2f}%")
    if state.ema is not None:
      ema = evaluate(state.ema)
      row.update(miou_ema=ema['miou'], aacc_ema=ema['aacc'])
      line += f"; EMA mIoU {100 * ema['miou']:.2f}%, aAcc {100 * ema['aacc']:.2f}%"
    metrics_log.write(int(state.step), row)
    log(line)
    return scores

  step, scores, pending, skipped = int(state.step), None, [], 0
  bar = stack.enter_context(tqdm(total=spec.total_steps, initial=step, unit='step',
                                 dynamic_ncols=True, disable=jax.process_index() != 0))
  stop = stack.enter_context(sigterm_requests_stop())
  window_start = time.perf_counter()
  while step < spec.total_steps:
    state, metrics = train_step(state, parallel.to_global(mesh, next(data_iterator)))
    if pending:  # Keep one step in flight, so the bar shows real progress and img/s.
      jax.block_until_ready(pending[-1])
    pending.append(metrics)
    step += 1
    bar.update()
    stopping = stop['stop'] or manager.reached_preemption(step)
    is_last = step == spec.total_steps
    if step % spec.log_every_steps == 0 or is_last or stopping:
      fetched = jax.device_get(pending)
      values = mean_metrics(fetched)
      values['img_per_s'] = len(pending) * spec.batch_size / (time.perf_counter() - window_start)
      metrics_log.write(step, values)
      if spec.loss_scale is not None:
        skipped = skips_in_a_row(fetched, skipped, spec.loss_scale.max_consecutive_skips)
      bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                      img_s=f"{values['img_per_s']:.1f}")
      pending, window_start = [], time.perf_counter()
    if step % spec.checkpoint_every_steps == 0 or is_last or stopping:
      if pending:
        mean_metrics(pending)  # Never checkpoint a state that came from a non-finite loss.
      checkpointing.save(manager, state, spec.model, spec.data.dataset)
    if step % spec.eval_every_steps == 0 or is_last:
      scores = run_eval(state)
      window_start = time.perf_counter()
    if stopping:
      log(f'stopping at step {step} (SIGTERM / preemption); checkpoint saved, rerun the same '
          'command to resume')
      break
  if scores is None and step == spec.total_steps:
    scores = run_eval(state)  # Resumed after the last checkpoint: still report the final mIoU.
  summary = {'step': step, 'miou': scores['miou'] if scores else None,
             'checkpoint': str(manager.directory / str(step))}
  return summary, scores
