"""The training input pipeline alone: images per second, and per CPU core, at a network's
recipe (python -m bisenet_jax.bench data), and the pieces 'bench train' measures it with.

The frames are synthetic street scenes at Cityscapes' size (1024x2048 PNG, its folder layout),
written once under ``--data-frames``, read either as PNG files (decoded every time) or through
their decoded-frame records (``config.data.records``, training's default). A handful of frames
stands for Cityscapes' 2,975: the source the pipeline reads has that many records, cycling over
the frames, because grain's shuffle of a tiny index costs milliseconds per record (3 ms at 8
records, 13 us at 2,975), which would be measured instead of the pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import psutil

from bisenet_jax.data import cityscapes, pipeline, records, synthetic
from bisenet_jax.errors import UserError
from bisenet_jax.specs import NETWORKS, format_size
from bisenet_jax.train import config as config_lib

FRAMES = dict(num_train=8, num_val=1, height=1024, width=2048, seed=0)
DEFAULT_FRAMES_DIR = '~/.cache/bisenet_jax/bench_frames'
READS = ('records', 'png')
COLUMNS = (  # (header, key, format), for report.table.
    ('arch', 'arch', '{}'), ('read', 'read', '{}'), ('workers', 'workers', '{}'),
    ('threads', 'threads', '{}'),
    ('batch', 'batch', '{}'), ('crop', 'crop', '{}'), ('img/s', 'data_img_per_s', '{:.1f}'),
    ('img/s/core', 'data_img_per_s_per_core', '{:.1f}'), ('CPU s', 'cpu_seconds', '{:.1f}'),
)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What the input pipeline of a network's recipe does: its crop, batch and resize."""
  crop_size: tuple[int, int]
  batch_size: int
  resize_to: tuple[int, int]
  scale_range: tuple[float, float]


def recipe(arch: str) -> Recipe:
  """The pipeline settings of ``arch``'s recipe config (configs/*.py in the checkout)."""
  path = Path(__file__).resolve().parents[2] / NETWORKS[arch].config
  if not path.exists():
    raise UserError(f'{path} is missing: bench data reads the recipes of a checkout of the '
                    'repository (pip install -e .)')
  config = config_lib.load_config_file(str(path))
  return Recipe(tuple(config.data.crop_size), config.batch_size, tuple(config.data.resize_to),
                tuple(config.data.scale_range))


def reference_frames(frames_dir: str | os.PathLike) -> cityscapes.CityscapesFolder:
  """PNG files at Cityscapes' frame size in its folder layout: synthetic street scenes,
  written once under ``frames_dir``, read (and decoded) as the training pipeline reads them."""
  root = synthetic.ensure_synthetic_cityscapes(Path(frames_dir).expanduser(), **FRAMES)
  return cityscapes.CityscapesFolder(root, 'train')


def cached_frames(frames_dir: str | os.PathLike) -> records.FrameRecords:
  """``reference_frames`` through decoded-frame records (``<frames_dir>/records``, built once),
  as training reads them with the default ``config.data.records``."""
  return records.open_records(reference_frames(frames_dir),
                              Path(frames_dir).expanduser() / 'records',
                              remedy='pass --data-frames DIR on a disk with room')


class CityscapesSized:
  """``source`` presented as Cityscapes' 2,975 training records, cycling over its samples."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return config_lib.CITYSCAPES_TRAIN_IMAGES

  def __getitem__(self, index):
    return self.source[index % len(self.source)]


def frames(read: str, frames_dir: str | os.PathLike) -> CityscapesSized:
  """The measured source: the frames as PNG files or through their records."""
  return CityscapesSized(cached_frames(frames_dir) if read == 'records'
                         else reference_frames(frames_dir))


class CpuClock:
  """CPU seconds used by this process and its children (grain workers) since ``start()``."""

  def __init__(self):
    self.process = psutil.Process()

  def _now(self) -> float:
    processes = [self.process, *self.process.children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in processes if p.is_running())

  def start(self) -> None:
    self.started = self._now()

  def seconds(self) -> float:
    return self._now() - self.started


def time_batches(iterator, steps: int, batch: int, min_cpu_seconds: float = 0.25) -> dict:
  """img/s of at least ``steps`` batches of ``batch`` images from a started iterator, and img/s
  per CPU core (images per CPU-second of this process and its workers: the rate one core
  sustains, whatever the thread count). Batches are taken until ``min_cpu_seconds`` of CPU
  time have passed as well: the OS counts CPU time in ticks (10 ms), which a few small batches
  may not reach."""
  cpu = CpuClock()
  cpu.start()
  start = time.perf_counter()
  count = 0
  while count < steps or cpu.seconds() < min_cpu_seconds:
    next(iterator)
    count += 1
  seconds, cpu_seconds = time.perf_counter() - start, cpu.seconds()
  return {'data_img_per_s': count * batch / seconds,
          'data_img_per_s_per_core': count * batch / cpu_seconds, 'cpu_seconds': cpu_seconds}


def measure(arch: str, read: str, workers: int, threads: int, steps: int,
            frames_dir: str | os.PathLike = DEFAULT_FRAMES_DIR) -> dict:
  """One row of 'bench data': ``arch``'s recipe pipeline on the frames read as ``read``, with
  ``workers`` grain worker processes (0: this process) of ``threads`` reader threads each (0:
  one per core)."""
  settings = recipe(arch)
  threads = threads or pipeline.available_cores()
  iterator = pipeline.make_train_iterator(
      frames(read, frames_dir), global_batch_size=settings.batch_size, seed=0,
      crop_size=settings.crop_size, resize_to=settings.resize_to,
      scale_range=settings.scale_range, worker_count=workers, threads=threads)
  try:
    next(iterator)  # Started (workers spawned, buffers filled) before the clock runs.
    rates = time_batches(iterator, steps, settings.batch_size)
  finally:
    if hasattr(iterator, 'close'):  # Stops worker processes, if any.
      iterator.close()
  return {'mode': 'data', 'arch': arch, 'read': read, 'workers': workers, 'threads': threads,
          'batch': settings.batch_size, 'crop': format_size(settings.crop_size),
          'steps': steps, **rates}
