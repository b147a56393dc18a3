"""Tests of bisenet_jax.data.pipeline: seeded, sharded, resumable train batches; padded eval."""

import json
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from bisenet_jax.data import pipeline
from bisenet_jax.errors import UserError
from bisenet_jax.train import config as config_lib
from goldens import pipeline_batches

RECORDED_BATCHES = Path(pipeline_batches.__file__).with_suffix('.json')

NUM_RECORDS = 16
TRAIN = dict(global_batch_size=4, seed=7, crop_size=(24, 40), resize_to=(24, 40),
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
    for key in ('image', 'label', 'content'):
      np.testing.assert_array_equal(a[key], b[key])


def test_batches_are_seeded_and_each_epoch_is_a_new_permutation():
  batches = take(train_iterator(), 8)
  assert batches[0]['image'].shape == (4, 24, 40, 3) and batches[0]['image'].dtype == np.uint8
  assert batches[0]['label'].shape == (4, 24, 40) and batches[0]['label'].dtype == np.uint8
  assert batches[0]['content'].shape == (4, 4) and batches[0]['content'].dtype == np.int32
  epochs = [sum((record_ids(b) for b in batches[i:i + 4]), []) for i in (0, 4)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(NUM_RECORDS))
  assert epochs[0] != epochs[1]

  assert_same_batches(batches, take(train_iterator(), 8))
  other_seed = take(train_iterator(seed=8), 4)
  assert sum((record_ids(b) for b in other_seed), []) != epochs[0]


@pytest.mark.parametrize('processes', [2, 4])
def test_processes_read_disjoint_contiguous_rows_of_the_same_global_batches(processes):
  """Stacking the processes' local batches in process order gives the one-process batch."""
  single = take(train_iterator(global_batch_size=8), 4)
  shards = [take(train_iterator(global_batch_size=8, process_index=p, process_count=processes), 4)
            for p in range(processes)]
  # The first two steps are one epoch (16 records): every record read exactly once in all.
  seen = [sum((record_ids(b) for b in shard[:2]), []) for shard in shards]
  assert sorted(sum(seen, [])) == list(range(NUM_RECORDS))
  for step, whole in enumerate(single):
    stacked = {key: np.concatenate([shard[step][key] for shard in shards])
               for key in ('image', 'label', 'content')}
    assert shards[0][step]['image'].shape[0] == 8 // processes
    assert_same_batches([stacked], [whole])


def test_batch_size_must_divide_by_process_count():
  with pytest.raises(UserError, match='batch size 5 .* 2 processes'):
    train_iterator(global_batch_size=5, process_count=2)


@pytest.mark.parametrize('processes', [1, 2])
def test_start_step_resumes_with_exactly_the_next_batches(processes):
  """The stream is a function of the step: no saved iterator state, any process count."""
  expected = take(train_iterator(), 8)[3:]  # crosses into the second epoch
  resumed = [take(train_iterator(start_step=3, process_index=p, process_count=processes), 5)
             for p in range(processes)]
  stacked = [{key: np.concatenate([shard[step][key] for shard in resumed])
              for key in ('image', 'label', 'content')} for step in range(5)]
  assert_same_batches(stacked, expected)


def test_worker_processes_give_the_same_batches():
  if not flags.FLAGS.is_parsed():  # What absl.app.run does for train.py.
    flags.FLAGS(['pytest'])
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
  batches = list(pipeline.EvalBatches(source, batch_size=2, resize_to=(8, 16)))
  names = [b['name'] for b in batches]
  assert names == [['frame0', 'frame1'], ['frame2', ''], ['frame3', 'frame4']]
  assert [b['valid'].tolist() for b in batches] == [[True, True], [True, False], [True, True]]
  assert [b['image'].shape for b in batches] == [(2, 8, 16, 3), (2, 8, 16, 3), (2, 16, 8, 3)]
  assert batches[0]['image'].dtype == np.uint8 and batches[0]['label'].dtype == np.uint8
  np.testing.assert_array_equal(batches[1]['image'][0], source[2]['image'])
  np.testing.assert_array_equal(batches[1]['label'][0], source[2]['label'])
  assert batches[1]['name'][1] == '' and not batches[1]['valid'][1]  # Padding: masked out.


def test_eval_batches_leave_the_label_at_its_original_size():
  batch = next(iter(pipeline.EvalBatches(SizedSource(), batch_size=4, resize_to=(16, 32))))
  assert batch['image'].shape == (4, 16, 32, 3) and batch['label'].shape == (4, 8, 16)
  assert batch['valid'].tolist() == [True, True, True, False]


def test_eval_batches_of_every_process_agree_in_size_and_cover_the_split_once():
  """Mixed sizes over 3 processes: at each step every process has a batch of the same shape
  (so they form one global batch), and each sample is a valid row exactly once."""
  source = SizedSource()  # sizes A A A B B
  shards = [list(pipeline.EvalBatches(source, batch_size=1, resize_to=(8, 16), process_index=p,
                                      process_count=3)) for p in range(3)]
  assert len({len(shard) for shard in shards}) == 1
  for step in zip(*shards):
    assert len({(b['image'].shape, b['label'].shape) for b in step}) == 1
  valid = sorted(name for shard in shards for batch in shard
                 for name, ok in zip(batch['name'], batch['valid']) if ok)
  assert valid == [f'frame{i}' for i in range(5)]
  # Group A (3 samples) gives each process one batch; group B (2) leaves process 2 padding.
  assert [b['valid'].tolist() for b in shards[2]] == [[True], [False]]


@pytest.mark.parametrize('case', ['small', 'small_wide', 'odd',
                                  pytest.param('r18', marks=pytest.mark.slow),
                                  pytest.param('fastscnn', marks=pytest.mark.slow)])
def test_batches_equal_those_of_the_whole_frame_pipeline(case):
  """Every batch, bit for bit, is the one the pipeline gave when it resized whole frames with
  OpenCV before cropping (tests/goldens/pipeline_batches.py recorded them)."""
  recorded = json.loads(RECORDED_BATCHES.read_text())[case]
  settings = pipeline_batches.CASES[case]
  samples = pipeline_batches.frames(*settings['frames'])
  assert pipeline_batches.digests(samples, settings['steps'], **settings['settings']) == recorded


@pytest.mark.parametrize('threads', [1, 3])
def test_batches_do_not_depend_on_the_reader_threads(threads):
  assert_same_batches(take(train_iterator(threads=threads), 6),
                      take(train_iterator(threads=2), 6))


@pytest.mark.parametrize('key', ['threads', 'worker_count'])
def test_reader_settings_are_checked(key):
  config = config_lib.reference_config('bisenetv1_r18')
  config.data.source, config.data.root = 'cityscapes', '/data/cityscapes'
  config.data[key] = -1
  with pytest.raises(UserError, match=f'config.data.{key}=.*whole number, 0 or more'):
    config_lib.data_spec(config.data)
