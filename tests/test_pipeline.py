"""Tests of bisenet_jax.data.pipeline: seeded, sharded, resumable train batches; padded eval."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from bisenet_jax.data import pipeline, transforms
from bisenet_jax.errors import UserError

NUM_RECORDS = 16
TRAIN = dict(global_batch_size=4, seed=7, crop_size=(24, 40), base_size=(40, 24),
             scale_range=(0.5, 2.0))


class TaggedSource:
  """Record i is a 24x40 frame labelled i everywhere, so the label tells which record a row is."""

  def __len__(self):
    return NUM_RECORDS

  def __getitem__(self, index):
    rng = np.random.default_rng(index)
    return {'image': rng.integers(0, 256, (24, 40, 3), dtype=np.uint8),
            'label': np.full((24, 40), index, np.uint8)}


def record_ids(batch):
  """The record each row came from (padding and crops only add the ignore label)."""
  return [int(np.min(label)) for label in batch['label']]


def train_iterator(**overrides):
  return pipeline.make_train_iterator(TaggedSource(), **{**TRAIN, **overrides})


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_batches_are_seeded_and_each_epoch_is_a_new_permutation():
  batches = take(train_iterator(), 8)
  assert batches[0]['image'].shape == (4, 24, 40, 3) and batches[0]['image'].dtype == np.float32
  assert batches[0]['label'].shape == (4, 24, 40) and batches[0]['label'].dtype == np.uint8
  epochs = [sum((record_ids(b) for b in batches[i:i + 4]), []) for i in (0, 4)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_RECORDS))
  assert epochs[0] != epochs[1]

  assert_same_batches(batches, take(train_iterator(), 8))
  other_seed = take(train_iterator(seed=8), 4)
  assert sum((record_ids(b) for b in other_seed), []) != epochs[0]


def test_two_processes_read_disjoint_halves_of_the_same_global_batches():
  single = take(train_iterator(), 4)
  shards = [take(train_iterator(process_index=p, process_count=2), 4) for p in (0, 1)]
  seen = [sum((record_ids(b) for b in shard), []) for shard in shards]
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(NUM_RECORDS))
  for step, whole in enumerate(single):  # process p holds rows p, p + 2 of the global batch
    for p in (0, 1):
      assert shards[p][step]['image'].shape[0] == 2
      np.testing.assert_array_equal(shards[p][step]['image'], whole['image'][p::2])
      np.testing.assert_array_equal(shards[p][step]['label'], whole['label'][p::2])


def test_batch_size_must_divide_by_process_count():
  with pytest.raises(UserError, match='batch size 5 .* 2 processes'):
    train_iterator(global_batch_size=5, process_count=2)


def test_set_state_resumes_with_exactly_the_next_batches():
  iterator = train_iterator()
  take(iterator, 3)
  state = iterator.get_state()
  expected = take(iterator, 5)  # crosses into the second epoch
  resumed = train_iterator()
  resumed.set_state(state)
  assert_same_batches(take(resumed, 5), expected)


def test_orbax_checkpoint_round_trip(tmp_path):
  iterator = train_iterator()
  take(iterator, 2)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = take(iterator, 2)
    restored = train_iterator()
    manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert_same_batches(take(restored, 2), expected)


def test_worker_processes_give_the_same_batches():
  expected = take(train_iterator(), 3)
  iterator = train_iterator(worker_count=1)
  try:
    assert_same_batches(take(iterator, 3), expected)
  finally:
    iterator.close()


class SizedSource:
  """Three 8x16 frames, then two 16x8 frames, each with a name."""

  def __init__(self):
    shapes = [(8, 16)] * 3 + [(16, 8)] * 2
    self.samples = [{'image': np.full(shape + (3,), i, np.uint8),
                     'label': np.full(shape, i, np.uint8),
                     'name': f'frame{i}'} for i, shape in enumerate(shapes)]

  def __len__(self):
    return len(self.samples)

  def __getitem__(self, index):
    return self.samples[index]


def test_eval_batches_keep_order_group_sizes_and_pad_with_invalid_rows():
  source = SizedSource()
  batches = list(pipeline.make_eval_batches(source, batch_size=2, base_size=(16, 8)))
  names = [b['name'] for b in batches]
  assert names == [['frame0', 'frame1'], ['frame2', ''], ['frame3', 'frame4']]
  assert [b['valid'].tolist() for b in batches] == [[True, True], [True, False], [True, True]]
  assert [b['image'].shape for b in batches] == [(2, 8, 16, 3), (2, 8, 16, 3), (2, 16, 8, 3)]
  assert batches[0]['image'].dtype == np.float32 and batches[0]['label'].dtype == np.uint8
  np.testing.assert_array_equal(batches[1]['image'][0], transforms.normalize(source[2]['image']))
  np.testing.assert_array_equal(batches[1]['label'][0], source[2]['label'])
  assert (batches[1]['image'][1] == 0).all() and (batches[1]['label'][1] == 255).all()


def test_eval_batches_leave_the_label_at_its_original_size():
  batch = next(pipeline.make_eval_batches(SizedSource(), batch_size=4, base_size=(32, 16)))
  assert batch['image'].shape == (4, 16, 32, 3) and batch['label'].shape == (4, 8, 16)
  assert batch['valid'].tolist() == [True, True, True, False]
