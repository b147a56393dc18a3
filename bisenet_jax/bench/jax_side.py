"""One benchmark point of the JAX model: inference (the evaluation path) or a training step."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from bisenet_jax import models
from bisenet_jax.bench import flops as flops_lib, timing
from bisenet_jax.data import pipeline
from bisenet_jax.errors import UserError
from bisenet_jax.eval import evaluator
from bisenet_jax.train import optim, state as state_lib, step as step_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Point:
  """What one measurement runs: ``mode`` 'infer' or 'train', on ``devices`` devices."""
  mode: str
  arch: str
  devices: int
  batch_per_device: int
  height: int
  width: int
  dtype: str

  @property
  def global_batch(self) -> int:
    return self.devices * self.batch_per_device

  @property
  def model_name(self) -> str:
    return f'bisenetv1_{self.arch}'


def random_inputs(point: Point, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The same images (normalised-like, NHWC float32) and labels for JAX and PyTorch."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((point.global_batch, point.height, point.width, 3), np.float32)
  labels = rng.integers(0, 19, (point.global_batch, point.height, point.width), np.uint8)
  return images, labels


def _memory(devices, compiled) -> dict:
  """The compiled program's footprint, and the backend's high-water mark where it reports one.

  ``program_memory_gib`` (arguments + outputs + temporaries - donated/aliased buffers, from XLA's
  memory analysis) is exact for this point on every backend. The backend's
  ``peak_bytes_in_use`` is the process-wide maximum so far (JAX cannot reset it), so in a
  sweep it belongs to the largest point measured up to this one.
  """
  stats = devices[0].memory_stats() or {}
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
  peak = flops_lib.peak_tflops(device_kind, point.dtype, peak_override)
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
  model = models.build_model(point.model_name, dtype=DTYPES[point.dtype])
  mesh = state_lib.make_mesh(mesh_devices(point.devices))
  images, labels = random_inputs(point)
  return model, mesh, images, labels


def measure_infer(point: Point, warmup: int, steps: int, peak_override=None) -> dict:
  """Whole-image inference as evaluation runs it: forward, upsample to full size, argmax."""
  model, mesh, images, _ = _setup(point)
  variables = jax.device_put(model.init(jax.random.key(0), images[:1, :64, :64], train=False),
                             state_lib.replicated(mesh))
  images = _global_array(images, state_lib.batch_sharded(mesh))
  segment = evaluator.make_segment_fn(model, evaluator.InferenceOptions(), num_classes=19)
  size = (point.height, point.width)
  compiled, compile_s = timing.time_compile(segment, variables, images, size)
  times = timing.time_steps(lambda: compiled(variables, images), warmup, steps)
  analytic = flops_lib.analytic_conv_flops(lambda v, x: model.apply(v, x), variables,
                                           jax.ShapeDtypeStruct((1, *size, 3), jnp.float32))
  summary = timing.summarize(times, point.global_batch)
  return {'compile_s': compile_s, **summary,
          **_flops_fields(point, compiled, analytic, float(np.median(times)), peak_override),
          **_memory(mesh.devices.flat, compiled)}


def measure_train(point: Point, warmup: int, steps: int, peak_override=None,
                  data_steps: int = 3, data_workers: int = 0) -> dict:
  """One SGD step (forward, 3 losses, backward, update) on a sharded batch, plus data rates."""
  model, mesh, images, labels = _setup(point)
  schedule = optim.poly_warmup_schedule()
  state = state_lib.create_train_state(model, optim.make_optimizer(schedule), jax.random.key(0),
                                       mesh)
  batch = {'image': _global_array(images, state_lib.batch_sharded(mesh)),
           'label': _global_array(labels, state_lib.batch_sharded(mesh))}
  train_step = step_lib.jit_train_step(mesh, learning_rate_fn=schedule, dropout_seed=0)
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
      jax.ShapeDtypeStruct((2, point.height, point.width, 3), jnp.float32)) / 2
  summary = timing.summarize(times, point.global_batch)
  data = measure_data(point, run, mesh, data_steps, data_workers)
  return {'compile_s': compile_s, **summary,
          **_flops_fields(point, compiled, analytic, float(np.median(times)), peak_override),
          **_memory(mesh.devices.flat, compiled), **data}


class RandomFrames:
  """In-memory source of random Cityscapes-shaped frames (2:1), for the input pipeline rate."""

  def __init__(self, height: int, width: int, count: int = 8):
    rng = np.random.default_rng(0)
    self.samples = [{'image': rng.integers(0, 256, (height, 2 * width, 3), np.uint8),
                     'label': rng.integers(0, 19, (height, 2 * width), np.uint8),
                     'name': str(i)} for i in range(count)]

  def __len__(self):
    return len(self.samples)

  def __getitem__(self, index):
    return self.samples[index]


def measure_data(point: Point, step, mesh, steps: int, workers: int = 0) -> dict:
  """This host's train pipeline img/s alone, and the share of a fed step spent waiting for data.

  ``workers`` is ``config.data.worker_count``: 0 runs the transforms in threads of this process.
  """
  source = RandomFrames(point.height, point.width)
  iterator = pipeline.make_train_iterator(
      source, global_batch_size=point.global_batch, seed=0, crop_size=(point.height, point.width),
      base_size=(2 * point.width, point.height), scale_range=(0.5, 2.0), worker_count=workers,
      process_index=jax.process_index(), process_count=jax.process_count())
  local_batch = point.global_batch // jax.process_count()
  to_global = lambda host: jax.make_array_from_process_local_data(state_lib.batch_sharded(mesh),
                                                                   host)
  try:
    next(iterator)  # Started (workers spawned, buffers filled) before the clock runs.
    start = time.perf_counter()
    for _ in range(steps):
      next(iterator)
    data_img_per_s = steps * local_batch / (time.perf_counter() - start)

    waited = 0.0
    jax.block_until_ready(step(to_global(next(iterator))))
    start = time.perf_counter()
    for _ in range(steps):
      before = time.perf_counter()
      host = next(iterator)
      waited += time.perf_counter() - before
      jax.block_until_ready(step(to_global(host)))
    fed_seconds = time.perf_counter() - start
  finally:
    if hasattr(iterator, 'close'):  # Stops worker processes, if any.
      iterator.close()
  return {'data_img_per_s': data_img_per_s, 'data_wait_fraction': waited / fed_seconds}
