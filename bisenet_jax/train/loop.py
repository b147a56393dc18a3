"""``train_and_evaluate(config, workdir)``: the training run, resumable from any interruption.

Everything a run writes lives in ``workdir``: ``checkpoints/<step>/`` (orbax: model variables,
optimizer state, model config), ``metrics.jsonl`` (one JSON object per logged step; evaluation
rows carry ``miou``) and ``tensorboard/``. Running the same command again in the same workdir
resumes from the newest complete checkpoint: the data stream (a function of the step), the
dropout masks (folded from the step) and the learning rate continue exactly, so a killed and
resumed run produces the same parameters and per-step losses as an uninterrupted one, with any
number of processes and devices.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
from flax import traverse_util
from tqdm import tqdm

from bisenet_jax import checkpoint, models, parallel
from bisenet_jax.data import cityscapes, pipeline, sources, synthetic
from bisenet_jax.errors import UserError
from bisenet_jax.eval import evaluator
from bisenet_jax.interop import imagenet
from bisenet_jax.train import optim, state as state_lib, step as step_lib

OPTIMIZER = 'optimizer'
METRICS_FILE = 'metrics.jsonl'


class TrainingDiverged(UserError):
  """The loss became NaN or infinite; the last checkpoint on disk predates it."""


CITYSCAPES_SOURCES = ('cityscapes', 'tfds', 'synthetic')
SOURCES = CITYSCAPES_SOURCES + ('folder', 'voc', 'ade20k')


def dataset_info(config: ml_collections.ConfigDict) -> sources.DatasetInfo:
  """The dataset of ``config.data`` (kind, classes, layout, test base size), as checkpoints
  record it."""
  data = config.data
  if data.source not in SOURCES:
    raise UserError(f'config.data.source must be one of {", ".join(SOURCES)}, got '
                    f'{data.source!r}.')
  kind = 'cityscapes' if data.source in CITYSCAPES_SOURCES else data.source
  if kind != 'cityscapes' and not data.root:
    raise UserError(f'config.data.root is empty: pass --config.data.root=/path/to/the/dataset '
                    f"(source '{data.source}').")
  layout = sources.FolderLayout(
      image_dir=data.image_dir, mask_dir=data.mask_dir, mask_suffix=data.mask_suffix,
      ignore_index=data.ignore_index, reduce_zero_label=data.reduce_zero_label,
      label_map=data.label_map)
  return sources.DatasetInfo(kind, sources.dataset_classes(kind, data.root or None), layout,
                             tuple(data.base_size))


def make_sources(config: ml_collections.ConfigDict, info: sources.DatasetInfo):
  """(train, val) random-access sources of ``config.data.source``."""
  data = config.data
  splits = (data.train_split, data.val_split)
  if data.source == 'cityscapes' and not data.root:
    raise UserError('config.data.root is empty: pass --config.data.root=/path/to/cityscapes '
                    '(with leftImg8bit/ and gtFine/), or try --config configs/r18.py:demo.')
  if data.source == 'synthetic':
    root = synthetic.ensure_synthetic_cityscapes(Path(data.root).expanduser(),
                                                 **data.synthetic.to_dict())
    return tuple(cityscapes.CityscapesFolder(root, split) for split in splits)
  if data.source == 'tfds':
    from bisenet_jax.data.tfds import TfdsCityscapes  # Imports tensorflow_datasets.
    return tuple(TfdsCityscapes(split, data.tfds_data_dir or None) for split in splits)
  return tuple(sources.open_split(info, data.root, split) for split in splits)


def num_classes(config: ml_collections.ConfigDict, info: sources.DatasetInfo) -> int:
  """``config.model.num_classes``, or the dataset's when it is 0; the two must agree."""
  count = info.classes.num_classes
  if config.model.num_classes not in (0, count):
    where = (f'{Path(config.data.root) / "classes.txt"} lists' if info.kind == 'folder'
             else f'{info.kind} has')
    raise UserError(f'config.model.num_classes={config.model.num_classes} but {where} {count} '
                    f'classes: set --config.model.num_classes={count}, or 0 to follow the data.')
  return count


def make_model(config: ml_collections.ConfigDict, classes: int):
  """The model of ``config.model`` with ``classes`` outputs. 'float64' (parameters and compute)
  is for exactness checks: runs that differ only in the order of float additions then agree
  to ~1e-12."""
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float64': jnp.float64}
  if config.model.dtype not in dtypes:
    raise UserError(f'config.model.dtype must be one of {sorted(dtypes)}, got '
                    f'{config.model.dtype!r}.')
  if config.model.dtype == 'float64' and not jax.config.jax_enable_x64:
    raise UserError('config.model.dtype=float64 needs 64-bit JAX: set JAX_ENABLE_X64=1.')
  if config.model.name not in models.ARCHS:
    raise UserError(f'config.model.name must be one of {sorted(models.ARCHS)}, got '
                    f'{config.model.name!r}.')
  dtype = dtypes[config.model.dtype]
  return models.build_model(config.model.name, classes, config.model.dropout_rate,
                            stem=config.model.stem, dtype=dtype,
                            param_dtype=jnp.float64 if dtype == jnp.float64 else jnp.float32)


def initial_variables(config: ml_collections.ConfigDict, model) -> dict | None:
  """Variables to start from: a fine-tuning checkpoint, an ImageNet backbone, or None (init)."""
  if config.init.checkpoint and config.init.backbone:
    raise UserError('Set only one of config.init.checkpoint and config.init.backbone.')
  if config.init.checkpoint:
    loaded, variables = checkpoint.load_pretrained(config.init.checkpoint)
    if (loaded.depth, loaded.stem) != (model.depth, model.stem):
      raise UserError(f'{config.init.checkpoint} holds a different model (ResNet-{loaded.depth}, '
                      f'{loaded.stem} stem) than config.model ({config.model.name}, '
                      f'{config.model.stem} stem): fine-tune from a checkpoint of the same '
                      'architecture.')
    fresh = model.init(jax.random.key(config.seed), jnp.zeros((1, 64, 64, 3)), train=False)
    variables, report = transfer_variables(variables, fresh)
    log(f'{config.init.checkpoint}: {report}')
    return variables
  if config.init.backbone:
    variables = model.init(jax.random.key(config.seed), jnp.zeros((1, 64, 64, 3)), train=False)
    variables, report = imagenet.load_backbone(config.init.backbone, variables, model.stem)
    log(f'{config.init.backbone}: {report}')
    return variables
  return None


def transfer_variables(loaded: dict, fresh: dict) -> tuple[dict, str]:
  """``loaded`` in ``fresh``'s place, keeping ``fresh``'s classifiers if the class counts differ.

  Fine-tuning to another class set: every tensor but the three classifiers (the main head's
  and both auxiliary heads' last 1x1 convolutions, ``models.CLASSIFIERS``) comes from
  ``loaded``; those keep their fresh initialisation.

  Returns:
    (variables, a one-line report of what was loaded and what was re-initialised).

  Raises:
    UserError: anything but the classifiers differs (another architecture).
  """
  loaded_flat, fresh_flat = (traverse_util.flatten_dict(v) for v in (loaded, fresh))
  if loaded_flat.keys() != fresh_flat.keys():
    raise UserError('the checkpoint does not fit the model (its layers differ): fine-tune from '
                    'a checkpoint of the same architecture.')
  # Module paths (without the collection) whose tensors change shape.
  changed = sorted({key[1:-1] for key in fresh_flat
                    if loaded_flat[key].shape != fresh_flat[key].shape})
  if any(path not in models.CLASSIFIERS for path in changed):
    raise UserError(f'the checkpoint does not fit the model (layers '
                    f'{[".".join(p) for p in changed]} differ): fine-tune from a checkpoint of '
                    'the same architecture.')
  merged = {key: fresh_flat[key] if key[1:-1] in changed else loaded_flat[key]
            for key in fresh_flat}
  report = f'loaded {sum(key[1:-1] not in changed for key in fresh_flat)} tensors'
  if changed:
    kernel = ('params', *changed[0], 'kernel')
    report += (f'; re-initialised {", ".join(".".join(path) for path in changed)} '
               f'({loaded_flat[kernel].shape[-1]} -> {fresh_flat[kernel].shape[-1]} classes)')
  return traverse_util.unflatten_dict(merged), report


def make_checkpoint_manager(workdir: Path, config) -> ocp.CheckpointManager:
  # A checkpoint left unfinished by a crash is a temporary folder that is never read; the
  # next run removes it.
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                         enable_async_checkpointing=True, create=True,
                                         cleanup_tmp_directories=True)
  return ocp.CheckpointManager(workdir / checkpoint.TRAIN_CHECKPOINTS, options=options)


def save_checkpoint(manager, state, model_config: dict, info: sources.DatasetInfo) -> None:
  manager.save(int(state.step), args=ocp.args.Composite(**{
      checkpoint.VARIABLES: ocp.args.StandardSave(
          {'params': state.params, 'batch_stats': state.batch_stats}),
      OPTIMIZER: ocp.args.StandardSave({'opt_state': state.opt_state, 'step': state.step}),
      checkpoint.MODEL_CONFIG: ocp.args.JsonSave(model_config),
      checkpoint.DATASET: ocp.args.JsonSave(info.to_json()),
  }))


def restore_checkpoint(manager, step: int, abstract_state, model_config: dict):
  """Restores ``step`` into the shapes and shardings of ``abstract_state``."""
  restored = manager.restore(step, args=ocp.args.Composite(**{
      checkpoint.VARIABLES: ocp.args.StandardRestore(
          {'params': abstract_state.params, 'batch_stats': abstract_state.batch_stats}),
      OPTIMIZER: ocp.args.StandardRestore(
          {'opt_state': abstract_state.opt_state, 'step': abstract_state.step}),
      checkpoint.MODEL_CONFIG: ocp.args.JsonRestore(),
  }))
  if dict(restored[checkpoint.MODEL_CONFIG]) != model_config:
    raise UserError(f'The checkpoint in {manager.directory} is of another model '
                    f'({dict(restored[checkpoint.MODEL_CONFIG])}); use a new --workdir.')
  variables, optimizer = restored[checkpoint.VARIABLES], restored[OPTIMIZER]
  return abstract_state.replace(params=variables['params'],
                                batch_stats=variables['batch_stats'],
                                opt_state=optimizer['opt_state'], step=optimizer['step'])


class MetricsLog:
  """``metrics.jsonl`` + TensorBoard, written by process 0 only."""

  def __init__(self, workdir: Path, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = workdir / METRICS_FILE
    self.tensorboard_dir = workdir / 'tensorboard'
    self.tensorboard = None  # Opened at the first write: a run that fails early leaves no file.
    if self.enabled:
      self._drop_rows_after(resume_step)

  def _drop_rows_after(self, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint: forget their old rows."""
    if not self.path.exists():
      return
    rows = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)['step'] <= step]
    self.path.write_text(''.join(f'{row}\n' for row in rows))

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    with self.path.open('a') as f:
      f.write(json.dumps({'step': step, **values}) + '\n')
    if self.tensorboard is None:
      self.tensorboard = tensorboardX.SummaryWriter(str(self.tensorboard_dir))
    for name, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[dict]:
  """While active, SIGTERM sets ``flag['stop']`` instead of killing: save, then exit."""
  flag = {'stop': False}

  def handler(signum, frame):
    flag['stop'] = True

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def mean_metrics(pending: list[dict]) -> dict:
  """Host means of the per-step metrics since the last log; stops on a non-finite loss."""
  fetched = jax.device_get(pending)
  losses = np.array([m['loss'] for m in fetched])
  if not np.all(np.isfinite(losses)):
    raise TrainingDiverged(
        f'the loss became {losses[~np.isfinite(losses)][0]} within the last {len(pending)} '
        'steps; training stopped and the newest checkpoint predates it. Lower '
        '--config.optimizer.base_lr or check the labels.')
  return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  if config.batch_size % mesh.size:
    raise UserError(f'config.batch_size={config.batch_size} is not divisible by the '
                    f'{mesh.size} devices; use a multiple of {mesh.size}.')
  for key in ('total_steps', 'log_every_steps', 'checkpoint_every_steps', 'eval_every_steps',
              'keep_checkpoints', 'eval_batch_per_device'):
    if config[key] <= 0:
      raise UserError(f'config.{key} must be positive, got {config[key]}.')


def log(message: str) -> None:
  """Prints on process 0, above the progress bar."""
  if jax.process_index() == 0:
    tqdm.write(message)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Trains (or resumes) in ``workdir`` and evaluates; returns the final summary.

  Returns:
    ``{'step', 'miou', 'checkpoint'}`` of the final state.

  Raises:
    parallel.PeerLost: another process of a multi-process run stopped.
  """
  workdir = Path(workdir).expanduser().absolute()
  mesh = parallel.make_mesh()
  check_config(config, mesh)
  info = dataset_info(config)
  classes = num_classes(config, info)
  train_source, val_source = make_sources(config, info)
  model = make_model(config, classes)
  model_config = models.model_config(config.model.name, classes, config.model.stem)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f'Cannot create the workdir {workdir} ({e.strerror}): choose another '
                    '--workdir.') from e
  schedule = optim.poly_warmup_schedule(
      config.optimizer.base_lr, config.total_steps, config.optimizer.min_lr,
      config.optimizer.power, config.optimizer.warmup_steps, config.optimizer.warmup_ratio)
  tx = optim.make_optimizer(schedule, config.optimizer.momentum, config.optimizer.weight_decay)

  manager = make_checkpoint_manager(workdir, config)
  create = lambda variables: state_lib.create_train_state(model, tx, jax.random.key(config.seed),
                                                          mesh, variables)
  latest = manager.latest_step()
  if latest is None:
    state = create(initial_variables(config, model))
  else:
    # Every leaf replicated on this run's mesh, whatever layout wrote the checkpoint.
    abstract = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                          sharding=parallel.replicated(mesh)),
        jax.eval_shape(lambda: create(None)))
    state = restore_checkpoint(manager, latest, abstract, model_config)
    log(f'resumed from {manager.directory / str(latest)}')
  data_iterator = pipeline.make_train_iterator(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      crop_size=config.data.crop_size, base_size=config.data.base_size,
      scale_range=config.data.scale_range, start_step=int(state.step),
      worker_count=config.data.worker_count, process_index=jax.process_index(),
      process_count=jax.process_count())
  train_step = step_lib.jit_train_step(mesh, learning_rate_fn=schedule, dropout_seed=config.seed)
  metrics_log = MetricsLog(workdir, resume_step=int(state.step))

  def run_eval(state) -> dict:
    scores = evaluator.evaluate(
        model, {'params': state.params, 'batch_stats': state.batch_stats}, val_source,
        mesh=mesh, base_size=config.data.base_size, batch_per_device=config.eval_batch_per_device,
        num_classes=classes)
    metrics_log.write(int(state.step), {'miou': scores['miou'], 'aacc': scores['aacc'],
                                        'eval_seconds': scores['seconds']})
    log(f"step {int(state.step)}: val mIoU {100 * scores['miou']:.2f}%, "
        f"aAcc {100 * scores['aacc']:.2f}%")
    return scores

  step, scores, pending, peer_error = int(state.step), None, [], None
  bar = tqdm(total=config.total_steps, initial=step, unit='step', dynamic_ncols=True,
             disable=jax.process_index() != 0)
  window_start = time.perf_counter()
  try:
    with sigterm_requests_stop() as stop:
      while step < config.total_steps:
        state, metrics = train_step(state, parallel.to_global(mesh, next(data_iterator)))
        if pending:  # Keep one step in flight, so the bar shows real progress and img/s.
          jax.block_until_ready(pending[-1])
        pending.append(metrics)
        step += 1
        bar.update()
        stopping = stop['stop'] or manager.reached_preemption(step)
        is_last = step == config.total_steps
        if step % config.log_every_steps == 0 or is_last or stopping:
          values = mean_metrics(pending)
          seconds = time.perf_counter() - window_start
          values['img_per_s'] = len(pending) * config.batch_size / seconds
          metrics_log.write(step, values)
          bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                          img_s=f"{values['img_per_s']:.1f}")
          pending, window_start = [], time.perf_counter()
        if step % config.checkpoint_every_steps == 0 or is_last or stopping:
          if pending:
            mean_metrics(pending)  # Never checkpoint a state that came from a non-finite loss.
          save_checkpoint(manager, state, model_config, info)
        if step % config.eval_every_steps == 0 or is_last:
          scores = run_eval(state)
          window_start = time.perf_counter()
        if stopping:
          log(f'stopping at step {step} (SIGTERM / preemption); checkpoint saved, rerun the '
              'same command to resume')
          break
  except jax.errors.JaxRuntimeError as e:
    if not parallel.is_peer_failure(e):
      raise
    peer_error = e
  finally:
    bar.close()
    metrics_log.close()
    if hasattr(data_iterator, 'close'):
      data_iterator.close()
    if peer_error is None:  # Finishing a save needs every process: not after a peer died.
      manager.wait_until_finished()
      manager.close()
  if peer_error is not None:
    raise parallel.PeerLost(
        f'process {jax.process_index()} lost another process of this run at step {step} '
        f'({str(peer_error).splitlines()[0]}); the newest complete checkpoint is step '
        f'{manager.latest_step()}: start every process again to resume from it') from peer_error
  if scores is None and step == config.total_steps:
    scores = run_eval(state)  # Resumed after the last checkpoint: still report the final mIoU.
  summary = {'step': step, 'miou': scores['miou'] if scores else None,
             'checkpoint': str(manager.directory / str(step))}
  if scores is not None:
    log(f"done: step {step}, val mIoU {100 * scores['miou']:.2f}%, "
        f"checkpoint {summary['checkpoint']}")
  return summary
