"""Batches for training (grain, sharded over processes, resumable at any step) and evaluation.

Training reads an endless, seeded stream of records: epoch e is a fresh permutation of the
source (grain folds the epoch into the shuffle seed), and each record's augmentation draws from
a generator seeded by (seed, position in the stream). Global batch k is stream positions
`[k * B, (k + 1) * B)`; process p of P reads the contiguous rows `[p * B / P, (p + 1) * B / P)`
of it, so the processes read disjoint records, and stacking their local batches in process
order (which `parallel.to_global` does) gives the one-process batch exactly, row for row,
whatever P is. Batches are formed before the worker processes split the work, so they do not
depend on `worker_count` either. The stream has no epoch boundaries between batches (a batch
may hold the end of one epoch and the start of the next): count training in steps.

The stream is a pure function of (seed, step), so it needs no saved state: a run resumed at
step k builds the iterator with `start_step=k`, with any number of processes or workers.

Images stay uint8 (a quarter of float32's bytes to move to the device); the device normalises
them (`normalization.normalize_on_device`), using 'content' to zero the padding as the
reference does. With `worker_count > 0` grain spawns worker processes: the program needs an
`if __name__ == '__main__':` guard, must have parsed absl's flags (grain's workers read their
settings from them; `train.py` does through absl.app, `bench` at its start) and should close
the iterator (`it.close()`) before exit.
"""

import ctypes
import functools
import math
import os
import platform

from absl import flags
import cv2
import grain
import numpy as np

from bisenet_jax.data import transforms
from bisenet_jax.errors import UserError

# Per process: threads that read and transform the evaluation's samples, and how many finished
# ones may wait.
_EVAL_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def make_train_iterator(source, *, global_batch_size, seed, crop_size, resize_to, scale_range,
                        start_step=0, worker_count=0, threads=0, process_index=0,
                        process_count=1):
  """Returns this process's endless iterator of augmented training batches.

  Args:
    source: random-access source of samples `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W]}`.
    global_batch_size: images per step over all processes; must divide by `process_count`.
    seed: seeds the shuffle and the augmentation.
    crop_size: (height, width) of the training crop.
    resize_to: (height, width) of the Resize target at scale 1.
    scale_range: (low, high) of the random Resize scale.
    start_step: the first batch is global batch `start_step` of the stream.
    worker_count: worker processes for the transforms; 0 runs them in threads of this process.
    threads: threads per process that each make whole batches, and the finished batches that
      may wait; 0: one per CPU core this process may use.
    process_index: this process's index (jax.process_index()).
    process_count: number of processes (jax.process_count()).

  Returns:
    An iterator of dicts `{'image': uint8 [L, h, w, 3] RGB, 'label': uint8 [L, h, w],
    'content': int32 [L, 4]}` with (h, w) = crop_size and L = global_batch_size // process_count.

  Raises:
    UserError: the batch size is not a positive multiple of the process count.
  """
  local_batch_size, remainder = divmod(global_batch_size, process_count)
  if remainder or not local_batch_size:
    raise UserError(f'The batch size {global_batch_size} must be a positive multiple of the '
                    f'{process_count} processes: change config.batch_size')
  augment = functools.partial(transforms.train_transform, crop_size=tuple(crop_size),
                              resize_to=tuple(resize_to), scale_range=tuple(scale_range))
  # Consecutive chunks of L records; global batch k is chunks k * P ... k * P + P - 1, and
  # process p takes chunk k * P + p.
  chunks = (grain.MapDataset.source(source)
            .seed(seed)
            .shuffle()
            .repeat()
            .random_map(augment)
            .batch(local_batch_size, drop_remainder=True))
  dataset = chunks[process_index + start_step * process_count::process_count]
  threads = threads or available_cores()
  dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                      prefetch_buffer_size=threads))
  if worker_count:
    if not flags.FLAGS.is_parsed():  # Not a user error: how the program was started.
      raise RuntimeError('grain worker processes read absl flags: parse them first '
                         '(absl.app.run, or absl.flags.FLAGS([program_name]))')
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                                  worker_init_fn=prepare_process)
  else:
    prepare_process()
  return iter(dataset)


def available_cores() -> int:
  """The CPU cores this process may run on."""
  if hasattr(os, 'sched_getaffinity'):  # Linux: what the scheduler allows, not the machine.
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def prepare_process(*_):
  """Sets this process up for the pipeline's per-image work (grain's `worker_init_fn`, and
  called in the training process when the pipeline runs in its threads).

  * OpenCV's own thread pool is turned off: the pipeline's threads and workers already run one
    image each, and OpenCV splitting each call over more threads only adds CPU time.
  * glibc keeps freed large buffers for reuse instead of returning them to the system: by
    default every buffer above 32 MiB (a batch), and many above 128 KiB (a crop), is mapped
    afresh, so the kernel faults in and zeroes its pages again for every image, 1-3 ms of
    system time per 1024x1024 crop. The process keeps its peak usage instead.
  * Threads started from now on share the heaps that exist instead of each making its own: a
    reader thread's own heap cannot hold a batch (at most 64 MiB), so its batches were mapped
    afresh every time (R18's crops: 85-97 images per CPU-second with a heap per thread, 108-110
    with one, on two cores, in a process that runs the pipeline alone). Threads started before
    (JAX's, in a training process) keep theirs: making JAX's threads share one heap from the
    start slowed the CPU demo's training by a tenth, so it is not done.
  """
  cv2.setNumThreads(1)
  _keep_freed_memory()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (malloc.h).


def _keep_freed_memory():
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return
  libc = ctypes.CDLL(None)
  libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20)
  libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
  libc.mallopt(_M_ARENA_MAX, 1)


class EvalBatches:
  """This process's share of a split, in batches of exactly `batch_size` samples of one size.

  Samples are grouped by image size (in order of first appearance; within a group in source
  order); process p takes every P-th sample of each group. Every process yields the same
  number of batches of each size in the same order, so their batches always form one global
  batch: a batch that ends early (a group's end) is filled up with padding rows marked
  invalid, and a process with nothing left of a group yields an all-padding batch. Samples are
  read and transformed in background threads, in order. `len()` is the number of batches.

  Each batch is `{'image': uint8 [B, h, w, 3] RGB, 'label': uint8 [B, H, W] (original size),
  'valid': bool [B], 'name': list of B str}`; padding rows repeat a sample of the group with
  valid False and name ''.
  """

  def __init__(self, source, *, batch_size, resize_to, process_index=0, process_count=1):
    """Plans the batches.

    Args:
      source: random-access source of samples with 'image', 'label' and optionally 'name'. Its
        `image_sizes()` ((height, width) of every sample, e.g. from file headers) is used when
        it has one; otherwise every sample is read once more to learn its size.
      batch_size: rows per batch (this process's).
      resize_to: (height, width) of the test Resize target, or None to keep the images'
        sizes.
      process_index: this process's index (jax.process_index()).
      process_count: number of processes (jax.process_count()).
    """
    self.source, self.batch_size, self.resize_to = source, batch_size, resize_to
    self.plan = eval_batch_plan(_image_sizes(source), batch_size, process_index, process_count)

  def __len__(self):
    return len(self.plan)

  def __iter__(self):
    # The samples in the order the batches take them (a stand-in where a batch has none).
    prepare_process()
    order = [index for indices, stand_in in self.plan for index in (indices or [stand_in])]
    records = iter(grain.MapDataset.range(len(order))
                   .map(lambda position: _eval_record(order[position],
                                                      self.source[order[position]],
                                                      resize_to=self.resize_to))
                   .to_iter_dataset(_EVAL_READ_OPTIONS))
    for indices, _ in self.plan:
      batch = [next(records) for _ in range(max(1, len(indices)))]
      yield _stack_padded(batch, self.batch_size, valid_rows=len(indices))


def eval_batch_plan(sizes, batch_size, process_index=0, process_count=1):
  """This process's evaluation batches: `[(sample indices, stand-in index), ...]`.

  Every process gets the same number of batches per size group, in the same order; a batch's
  indices (at most `batch_size`, possibly none) all have one size, and the stand-in is a
  sample of that size to pad with.
  """
  groups = {}
  for index, size in enumerate(sizes):
    groups.setdefault(tuple(size), []).append(index)
  plan = []
  for indices in groups.values():
    mine = indices[process_index::process_count]
    batches = math.ceil(math.ceil(len(indices) / process_count) / batch_size)
    plan += [(mine[b * batch_size:(b + 1) * batch_size], indices[0]) for b in range(batches)]
  return plan


def _image_sizes(source):
  if hasattr(source, 'image_sizes'):
    return source.image_sizes()
  return [source[index]['image'].shape[:2] for index in range(len(source))]


def _eval_record(index, sample, *, resize_to):
  return {**transforms.eval_transform(sample, resize_to=resize_to),
          'name': sample.get('name', str(index))}


def _stack_padded(records, batch_size, valid_rows):
  """Stacks records into `batch_size` rows; rows from `valid_rows` on repeat the last record,
  marked invalid."""
  rows = records + [records[-1]] * (batch_size - len(records))
  return {
      'image': np.stack([r['image'] for r in rows]),
      'label': np.stack([r['label'] for r in rows]),
      'valid': np.arange(batch_size) < valid_rows,
      'name': [r['name'] for r in records[:valid_rows]] + [''] * (batch_size - valid_rows),
  }
