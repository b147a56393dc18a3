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
`if __name__ == '__main__':` guard and should close the iterator (`it.close()`) before exit.
"""

import functools

from absl import flags
import grain
import numpy as np

from bisenet_jax.data import transforms
from bisenet_jax.data.cityscapes import IGNORE_LABEL
from bisenet_jax.errors import UserError

# Per process: threads that read and transform batches, and how many finished batches may wait.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def make_train_iterator(source, *, global_batch_size, seed, crop_size, base_size, scale_range,
                        start_step=0, worker_count=0, process_index=0, process_count=1):
  """Returns this process's endless iterator of augmented training batches.

  Args:
    source: random-access source of samples `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W]}`.
    global_batch_size: images per step over all processes; must divide by `process_count`.
    seed: seeds the shuffle and the augmentation.
    crop_size: (height, width) of the training crop.
    base_size: (width, height) of the Resize target at scale 1.
    scale_range: (low, high) of the random Resize scale.
    start_step: the first batch is global batch `start_step` of the stream.
    worker_count: worker processes for the transforms; 0 runs them in threads of this process.
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
                              base_size=tuple(base_size), scale_range=tuple(scale_range))
  # Consecutive chunks of L records; global batch k is chunks k * P ... k * P + P - 1, and
  # process p takes chunk k * P + p.
  chunks = (grain.MapDataset.source(source)
            .seed(seed)
            .shuffle()
            .repeat()
            .random_map(augment)
            .batch(local_batch_size, drop_remainder=True))
  dataset = chunks[process_index + start_step * process_count::process_count]
  dataset = dataset.to_iter_dataset(_READ_OPTIONS)
  if worker_count:
    # grain's process prefetch reads its absl flags, which fails when the program never
    # parsed flags (tests, notebooks); absl.app.run-based entry points have parsed them already.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter(dataset)


def make_eval_batches(source, *, batch_size, base_size):
  """Yields the whole split in order, in batches of exactly `batch_size` same-sized samples.

  Consecutive samples whose image and label sizes agree share a batch; a batch that ends
  early (the split's end, or a size change) is filled up with padding rows marked invalid, so
  every batch has the same leading size and the evaluator only has to mask them.
  Samples are read and transformed in background threads, in order.

  Args:
    source: random-access source of samples with 'image', 'label' and optionally 'name'.
    batch_size: rows per batch.
    base_size: (width, height) of the test Resize target.

  Yields:
    `{'image': uint8 [B, h, w, 3] RGB, 'label': uint8 [B, H, W] (original size),
    'valid': bool [B], 'name': list of B str}`; padding rows have a zero image, an all-ignore
    label, valid False and name ''.
  """
  dataset = (grain.MapDataset.source(source)
             .map_with_index(functools.partial(_eval_record, base_size=tuple(base_size)))
             .to_iter_dataset(_READ_OPTIONS))
  group = []
  for record in dataset:
    if group and (len(group) == batch_size or _shapes(record) != _shapes(group[0])):
      yield _stack_padded(group, batch_size)
      group = []
    group.append(record)
  if group:
    yield _stack_padded(group, batch_size)


def _eval_record(index, sample, *, base_size):
  return {**transforms.eval_transform(sample, base_size=base_size),
          'name': sample.get('name', str(index))}


def _shapes(record):
  return record['image'].shape, record['label'].shape


def _stack_padded(records, batch_size):
  """Stacks records into a batch of `batch_size` rows, the missing rows being invalid padding."""
  padding = batch_size - len(records)
  blank_image = np.zeros_like(records[0]['image'])
  blank_label = np.full_like(records[0]['label'], IGNORE_LABEL)
  return {
      'image': np.stack([r['image'] for r in records] + [blank_image] * padding),
      'label': np.stack([r['label'] for r in records] + [blank_label] * padding),
      'valid': np.arange(batch_size) < len(records),
      'name': [r['name'] for r in records] + [''] * padding,
  }
