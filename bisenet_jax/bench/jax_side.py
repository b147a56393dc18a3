"""One benchmark point of the JAX model: inference (the evaluation path) or a training step."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from bisenet_jax import models, parallel
from bisenet_jax.bench import data_side, flops as flops_lib, timing
from bisenet_jax.data import pipeline
from bisenet_jax.errors import UserError
from bisenet_jax.eval import evaluator
from bisenet_jax.specs import LossScaleSpec, ModelSpec, ObjectiveSpec, Size
from bisenet_jax.train import losses, optim, state as state_lib, step as step_lib

# float16 trains with dynamic loss scaling (GradScaler's defaults), as config.model.dtype does.
DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class Point:
  """What one measurement runs: ``mode`` 'infer' or 'train', on ``devices`` devices."""
  mode: str
  arch: str
  devices: int
  batch_per_device: int
  input_size: Size
  dtype: str
  precision: str = 'highest'  # Of float32 convolutions and matmuls (specs.PRECISIONS).

  @property
  def global_batch(self) -> int:
    return self.devices * self.batch_per_device

  @property
  def model(self) -> ModelSpec:
    return ModelSpec(self.arch, 19, dtype=self.dtype)


def random_inputs(point: Point, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The same images (uint8 RGB, NHWC) and labels for JAX and PyTorch."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (point.global_batch, *point.input_size, 3), np.uint8)
  labels = rng.integers(0, 19, (point.global_batch, *point.input_size), np.uint8)
  return images, labels


def _memory(local_devices, compiled) -> dict:
  """The compiled program's footprint, and the backend's high-water mark where it reports one.

  ``program_memory_gib`` (arguments + outputs + temporaries - donated/aliased buffers, from XLA's
  memory analysis) is exact for this point on every backend. The backend's
  ``peak_bytes_in_use`` is the process-wide maximum so far (JAX cannot reset it), so in a
  sweep it belongs to the largest point measured up to this one.
  """
  stats = local_devices[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  analysis = compiled.memory_analysis()
  field = lambda name: getattr(analysis, name, 0) or 0
  program = (field('argument_size_in_bytes') + field('output_size_in_bytes')
             + field('temp_size_in_bytes') - field('alias_size_in_bytes'))
  return {'program_memory_gib': program / 2**30 if analysis is not None else None,
          'compiled_temp_gib': field('temp_size_in_bytes') / 2**30 if analysis else None,
          'process_peak_memory_gib': peak / 2**30 if peak else None}


def _flops_fields(point: Point, compiled, analytic_per_image: float, seconds_per_step: float,
                  peak_override: float | None) -> dict:
  per_device_program = flops_lib.xla_flops(compiled)
  xla_per_image = per_device_program / point.batch_per_device if per_device_program else None
  device_kind = jax.devices()[0].device_kind
  peak = flops_lib.peak_tflops(device_kind, point.dtype, point.precision, peak_override)
  # Model FLOPs (the analytic count), as MFU is defined: XLA's GPU cost analysis does not see
  # into cuDNN's convolution calls, so its figure there is a small fraction of the real work.
  achieved = analytic_per_image * point.batch_per_device / seconds_per_step
  return {'device_kind': device_kind, 'gflops_per_image_xla': xla_per_image and xla_per_image / 1e9,
          'gflops_per_image_analytic': analytic_per_image / 1e9,
          'peak_tflops_per_device': peak, 'mfu': achieved / (peak * 1e12) if peak else None}


def mesh_devices(count: int) -> list:
  """``count`` devices, the first ``count / P`` of each of the P processes.

  Every process of a multi-host run executes every program, so a sub-mesh must hold devices of
  all of them; on one host this is simply the first ``count`` devices.
  """
  processes = jax.process_count()
  if count % processes:
    raise UserError(f'{count} devices cannot be split evenly over {processes} processes: '
                    f'use multiples of {processes} in --devices.')
  per_process = count // processes
  return [device for process in range(processes)
          for device in [d for d in jax.devices() if d.process_index == process][:per_process]]


def _global_array(value: np.ndarray, sharding) -> jax.Array:
  """``value`` (the same on every process) as a global array with ``sharding``."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def _setup(point: Point):
  model = models.build(point.model)
  mesh = parallel.make_mesh(mesh_devices(point.devices))
  images, labels = random_inputs(point)
  return model, mesh, images, labels


def measure_infer(point: Point, warmup: int, steps: int, peak_override=None) -> dict:
  """Whole-image inference as evaluation runs it: uint8 images normalised on the device,
  forward, upsample to full size, argmax."""
  model, mesh, images, _ = _setup(point)
  variables = jax.device_put(models.init_variables(model), parallel.replicated(mesh))
  images = _global_array(images, parallel.batch_sharded(mesh))
  segment = evaluator.make_segment_fn(model, precision=point.precision)
  size = point.input_size
  compiled, compile_s = timing.time_compile(segment, variables, images, size)
  times = timing.time_steps(lambda: compiled(variables, images), warmup, steps)
  analytic = flops_lib.analytic_conv_flops(lambda v, x: model.apply(v, x), variables,
                                           jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  summary = timing.summarize(times, point.global_batch)
  return {'compile_s': compile_s, **summary,
          **_flops_fields(point, compiled, analytic, float(np.median(times)), peak_override),
          **_memory(mesh.local_devices, compiled)}


def measure_train(point: Point, warmup: int, steps: int, peak_override=None,
                  data_steps: int = 3, data_workers: int = 0, data_threads: int = 0,
                  frames_dir: str | os.PathLike = data_side.DEFAULT_FRAMES_DIR) -> dict:
  """One SGD step (forward, the network's reference losses, backward, update) on a sharded
  batch, plus data rates."""
  model, mesh, images, labels = _setup(point)
  schedule = optim.poly_warmup_schedule()
  state = state_lib.create_train_state(
      model, optim.make_optimizer(schedule), jax.random.key(0), mesh,
      loss_scale=LossScaleSpec() if point.dtype == 'float16' else None)
  content = np.tile(np.array([0, 0, *point.input_size], np.int32), (len(images), 1))
  batch = {key: _global_array(value, parallel.batch_sharded(mesh))
           for key, value in (('image', images), ('label', labels), ('content', content))}
  # One reference replica per device, as under DistributedDataParallel.
  objective = losses.make_objective(ObjectiveSpec.reference(point.model.network, point.devices))
  train_step = step_lib.jit_train_step(mesh, learning_rate_fn=schedule, dropout_seed=0,
                                       objective=objective, precision=point.precision)
  compiled, compile_s = timing.time_compile(train_step, state, batch)
  holder = {'state': state}  # The step donates its state: always call it with the newest.

  def run(batch):
    holder['state'], metrics = compiled(holder['state'], batch)
    return metrics

  times = timing.time_steps(lambda: run(batch), warmup, steps)
  # Forward convolutions of a train-mode pass (main and aux heads) x 3 for backward.
  forward = lambda v, x: model.apply(v, x, train=True, rngs={'dropout': jax.random.key(0)},
                                     mutable=['batch_stats'])
  analytic = 3 * flops_lib.analytic_conv_flops(
      forward, {'params': state.params, 'batch_stats': state.batch_stats},
      jax.ShapeDtypeStruct((2, *point.input_size, 3), jnp.float32)) / 2
  summary = timing.summarize(times, point.global_batch)
  data = measure_data(point, run, mesh, data_steps, data_workers, data_threads, frames_dir)
  data['data_cores_per_device'] = (summary['img_per_s'] / point.devices
                                   / data['data_img_per_s_per_core'])
  return {'compile_s': compile_s, **summary,
          **_flops_fields(point, compiled, analytic, float(np.median(times)), peak_override),
          **_memory(mesh.local_devices, compiled), **data}


def measure_data(point: Point, step, mesh, steps: int, workers: int, threads: int,
                 frames_dir: str | os.PathLike) -> dict:
  """This host's train pipeline on real files at the reference recipe, and the wait it causes.

  The pipeline reads 1024x2048 frames in the Cityscapes layout through their decoded-frame
  records (``data_side.frames``, as training does by default) and applies the reference's
  training transforms (scale 0.5-2.0, a crop of the point's resolution, flip, photometric
  distortion, padding). Returns its img/s, img/s per CPU core (images per CPU-second of this
  process and its workers: the rate one core sustains), and the share of a fed training step
  spent waiting for data. ``workers`` and ``threads`` are ``config.data.worker_count`` and
  ``config.data.threads``.
  """
  iterator = pipeline.make_train_iterator(
      data_side.frames('records', frames_dir), global_batch_size=point.global_batch, seed=0,
      crop_size=point.input_size, resize_to=(1024, 2048), scale_range=(0.5, 2.0),
      worker_count=workers, threads=threads, process_index=jax.process_index(),
      process_count=jax.process_count())
  local_batch = point.global_batch // jax.process_count()
  try:
    next(iterator)  # Started (workers spawned, buffers filled) before the clock runs.
    rates = data_side.time_batches(iterator, steps, local_batch)

    waited = 0.0
    jax.block_until_ready(step(parallel.to_global(mesh, next(iterator))))
    start = time.perf_counter()
    for _ in range(steps):
      before = time.perf_counter()
      host = next(iterator)
      waited += time.perf_counter() - before
      jax.block_until_ready(step(parallel.to_global(mesh, host)))
    fed_seconds = time.perf_counter() - start
  finally:
    if hasattr(iterator, 'close'):  # Stops worker processes, if any.
      iterator.close()
  return {'data_img_per_s': rates['data_img_per_s'],
          'data_img_per_s_per_core': rates['data_img_per_s_per_core'],
          'data_wait_fraction': waited / fed_seconds}
