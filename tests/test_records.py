"""Tests of bisenet_jax.data.records: the decoded-frame cache equals its source, notices every
change of the files, never serves a half-written copy, and fails in one line on a full disk."""

import errno
import json
import os
import pickle
import subprocess
import sys
import threading

import cv2
from absl import flags
import numpy as np
import pytest

from bisenet_jax.data import cityscapes, folder, records, sources, synthetic
from bisenet_jax.errors import UserError
from bisenet_jax.train import config as config_lib
from conftest import ROOT
from labelled_files import write_pair

STREETS = dict(num_train=3, num_val=1, height=48, width=96)
GARDENS = dict(num_train=4, num_val=1, height=40, width=56)  # Two wide and two tall frames.


@pytest.fixture
def streets(tmp_path):
  return synthetic.write_synthetic_cityscapes(tmp_path / 'streets', **STREETS)


@pytest.fixture
def gardens(tmp_path):
  return synthetic.write_synthetic_folder(tmp_path / 'gardens', **GARDENS)


def street_source(root):
  return cityscapes.CityscapesFolder(root, 'train')


def garden_source(root, **layout):
  return folder.SegmentationFolder(root, 'train', **layout)


class Lines(list):
  """A `log` that keeps the lines."""

  def __call__(self, line):
    self.append(line)


def open_quietly(source, cache_root, **kwargs):
  return records.open_records(source, cache_root, log=Lines(), **kwargs)


def assert_same_samples(cached, source):
  assert len(cached) == len(source)
  assert cached.image_sizes() == [tuple(size) for size in source.image_sizes()]
  for index in range(len(source)):
    expected, got = source[index], cached[index]
    assert got['name'] == expected['name']
    for key in ('image', 'label'):
      assert got[key].dtype == np.uint8 and got[key].shape == expected[key].shape
      np.testing.assert_array_equal(got[key], expected[key])


def built_directories(cache_root):
  return sorted(entry.name for entry in cache_root.iterdir() if not entry.name.startswith('.'))


def leftovers(cache_root):
  return sorted(entry.name for entry in cache_root.iterdir()
                if entry.name.startswith((records.BUILDING_PREFIX, '.removing-')))


@pytest.mark.parametrize('kind', ['cityscapes', 'folder'])
def test_records_equal_the_source_and_are_read_only_memory_maps(kind, streets, gardens, tmp_path):
  source = street_source(streets) if kind == 'cityscapes' else garden_source(gardens)
  lines = Lines()
  cached = records.open_records(source, tmp_path / 'cache', log=lines)
  assert isinstance(cached, records.FrameRecords)
  assert_same_samples(cached, source)
  assert len(lines) == 1 and 'decoded' in lines[0] and 'on disk' in lines[0], lines
  sample = cached[len(cached) - 1]
  for key in ('image', 'label'):
    assert isinstance(sample[key], np.memmap) and not sample[key].flags.writeable
    with pytest.raises(ValueError, match='read-only'):
      sample[key][0, 0] = 7
  # Rows and columns of a crop read straight from the map.
  np.testing.assert_array_equal(sample['image'][2:5, 3:9],
                                source[len(source) - 1]['image'][2:5, 3:9])


def test_frames_of_two_sizes_sit_page_aligned(gardens, tmp_path):
  cached = open_quietly(garden_source(gardens), tmp_path / 'cache')
  assert len(set(cached.image_sizes())) == 2
  index = records.read_index(cached.directory)
  assert all(offset % records.ALIGNMENT == 0
             for offset in index['image_offsets'] + index['label_offsets'])
  assert (cached.directory / records.IMAGES_FILE).stat().st_size == index['images_bytes']


def test_a_second_open_reads_the_records_without_decoding(streets, tmp_path, monkeypatch):
  first = open_quietly(street_source(streets), tmp_path / 'cache')
  monkeypatch.setattr(cityscapes.CityscapesFolder, '__getitem__',
                      lambda self, index: pytest.fail('decoded a file again'))
  lines = Lines()
  again = records.open_records(street_source(streets), tmp_path / 'cache', log=lines)
  assert again.directory == first.directory and lines == []


def test_records_pickle_without_their_pixels(streets, tmp_path):
  cached = open_quietly(street_source(streets), tmp_path / 'cache')
  data = pickle.dumps(cached)
  assert len(data) < 4096  # Paths, names and offsets; grain's workers map the files themselves.
  np.testing.assert_array_equal(pickle.loads(data)[1]['image'], cached[1]['image'])


def touch(path):
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def change_label(root):
  path = root / 'gtFine/train/synthetic/synthetic_000000_000001_gtFine_labelIds.png'
  label_ids = cityscapes._read_label_ids(path).copy()
  label_ids[:4] = 7  # 'road'
  assert cv2.imwrite(str(path), label_ids)


def add_frame(root):
  for kind, suffix in (('leftImg8bit', '_leftImg8bit.png'), ('gtFine', '_gtFine_labelIds.png')):
    source = root / kind / 'train/synthetic' / f'synthetic_000000_000000{suffix}'
    (source.parent / f'synthetic_000000_000009{suffix}').write_bytes(source.read_bytes())


def remove_frame(root):
  for path in root.rglob('synthetic_000000_000002_*'):
    path.unlink()


CHANGES = {
    'touched': lambda root: touch(
        root / 'leftImg8bit/train/synthetic/synthetic_000000_000000_leftImg8bit.png'),
    'changed': change_label,
    'added': add_frame,
    'removed': remove_frame,
}


@pytest.mark.parametrize('change', CHANGES)
def test_a_touched_changed_added_or_removed_file_gives_new_records(change, streets, tmp_path):
  cache_root = tmp_path / 'cache'
  before = open_quietly(street_source(streets), cache_root)
  CHANGES[change](streets)
  source = street_source(streets)
  after = open_quietly(source, cache_root)
  assert after.directory != before.directory
  assert_same_samples(after, source)
  # The old key's records can never be read again: removed, not kept beside.
  assert built_directories(cache_root) == [after.directory.name]
  assert leftovers(cache_root) == []


def test_another_decoder_version_gives_new_records(streets, tmp_path, monkeypatch):
  cache_root = tmp_path / 'cache'
  before = open_quietly(street_source(streets), cache_root)
  monkeypatch.setattr(records.cv2, '__version__', 'another')
  after = open_quietly(street_source(streets), cache_root)
  assert after.directory != before.directory
  assert built_directories(cache_root) == [after.directory.name]


def test_the_label_mapping_is_part_of_the_key(tmp_path):
  root = tmp_path / 'mapped'
  root.mkdir()
  (root / 'classes.txt').write_text('background\nthing\n')
  write_pair(root, 'a', [[0, 128, 0], [128, 128, 0]], split='train')
  plain = garden_source(root, label_map={0: 0, 128: 1})
  other = garden_source(root, label_map={0: 1, 128: 0})
  first = open_quietly(plain, tmp_path / 'cache')
  second = open_quietly(other, tmp_path / 'cache')
  assert first.directory != second.directory
  assert_same_samples(first, plain)
  assert_same_samples(second, other)
  # Another mapping is another source: both are kept.
  assert len(built_directories(tmp_path / 'cache')) == 2


@pytest.mark.parametrize('damage', ['no index', 'truncated', 'other key', 'building left over'])
def test_a_half_written_cache_is_never_used(damage, streets, tmp_path):
  cache_root = tmp_path / 'cache'
  source = street_source(streets)
  built = open_quietly(source, cache_root)
  directory = built.directory
  del built
  if damage == 'no index':
    (directory / records.INDEX_FILE).unlink()
  elif damage == 'truncated':
    os.truncate(directory / records.IMAGES_FILE, 4096)
  elif damage == 'other key':
    index = records.read_index(directory)
    (directory / records.INDEX_FILE).write_text(json.dumps({**index, 'key': '0' * 64}))
  else:  # A killed build's staging folder, and no finished copy.
    staging = cache_root / f'{records.BUILDING_PREFIX}{directory.name}-killed'
    directory.rename(staging)
    (staging / records.INDEX_FILE).unlink()
  lines = Lines()
  cached = records.open_records(source, cache_root, log=lines)
  assert any('decoded' in line for line in lines), lines  # Rebuilt, not trusted.
  assert_same_samples(cached, source)
  assert built_directories(cache_root) == [directory.name] and leftovers(cache_root) == []


def file_states(root):
  return {path: (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
          for path in root.rglob('*') if path.is_file()}


def test_too_little_free_space_is_one_line_and_leaves_nothing(streets, tmp_path, monkeypatch):
  cache_root = tmp_path / 'cache'
  source = street_source(streets)
  before = file_states(streets)
  pixels = sum(h * w for h, w in source.image_sizes())
  usage = records.shutil.disk_usage(tmp_path)
  monkeypatch.setattr(records.shutil, 'disk_usage',
                      lambda path: usage._replace(free=4 * pixels - 1))
  with pytest.raises(UserError) as raised:
    records.open_records(source, cache_root, log=Lines(),
                         remedy=records.remedy_for('--config.data.records'))
  message = str(raised.value)
  assert '\n' not in message
  description = source.record_key()
  key, family = records.record_keys(description)
  assert str(cache_root / records.directory_name(description, family, key)) in message
  # The exact size: both arrays in whole pages, and the index.
  plan = records.plan_index(description, source.image_sizes(), key)
  needed = records.bytes_needed(plan, json.dumps(plan, separators=(',', ':')))
  assert 4 * pixels <= needed < 4 * pixels + (2 * len(source) + 2) * records.ALIGNMENT
  assert f'they need {needed:,} bytes' in message
  assert '--config.data.records=DIR' in message and '--config.data.records=none' in message
  assert built_directories(cache_root) == [] and leftovers(cache_root) == []
  assert file_states(streets) == before


def test_a_disk_filling_up_during_the_write_is_one_line_and_leaves_nothing(streets, tmp_path,
                                                                           monkeypatch):
  cache_root = tmp_path / 'cache'
  source = street_source(streets)
  before = file_states(streets)
  writes = []
  real_pwrite = os.pwrite

  def pwrite(fd, data, offset):
    writes.append(offset)
    if len(writes) > 2:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_pwrite(fd, data, offset)

  monkeypatch.setattr(records.os, 'pwrite', pwrite)
  with pytest.raises(UserError, match=r'Not enough disk space .* filled up.*=none') as raised:
    records.open_records(source, cache_root, log=Lines())
  assert '\n' not in str(raised.value) and str(cache_root) in str(raised.value)
  assert built_directories(cache_root) == [] and leftovers(cache_root) == []
  assert file_states(streets) == before


def test_a_sample_that_cannot_be_read_fails_with_its_own_message_and_leaves_nothing(streets,
                                                                                  tmp_path):
  path = streets / 'gtFine/train/synthetic/synthetic_000000_000001_gtFine_labelIds.png'
  path.write_bytes(b'not a png')
  cache_root = tmp_path / 'cache'
  with pytest.raises(UserError, match='Cannot decode label'):
    open_quietly(street_source(streets), cache_root)
  assert built_directories(cache_root) == [] and leftovers(cache_root) == []


def test_a_build_that_loses_the_race_discards_its_copy(streets, tmp_path):
  """Two builds without the lock: both write a full copy, the rename keeps the first."""
  cache_root = tmp_path / 'cache'
  cache_root.mkdir()
  source = street_source(streets)
  description = source.record_key()
  key, family = records.record_keys(description)
  directory = cache_root / records.directory_name(description, family, key)
  barrier = threading.Barrier(2)

  class Racing:
    """The source, with both builds held until each has planned its copy."""

    def __len__(self):
      return len(source)

    def __getitem__(self, index):
      return source[index]

    def image_sizes(self):
      barrier.wait(timeout=30)
      return source.image_sizes()

  results, lines = [None, None], Lines()

  def run(slot):
    results[slot] = records.build(Racing(), description, directory, log=lines)

  threads = [threading.Thread(target=run, args=(slot,)) for slot in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert all(isinstance(result, records.FrameRecords) for result in results)
  assert sum('built by another process' in line for line in lines) == 1, lines
  for result in results:
    assert_same_samples(result, source)
  assert built_directories(cache_root) == [directory.name] and leftovers(cache_root) == []


_OPEN_IN_A_PROCESS = """
import hashlib, sys
from bisenet_jax.data import cityscapes, records
cached = records.open_records(cityscapes.CityscapesFolder(sys.argv[1], 'train'), sys.argv[2])
digest = hashlib.sha256(b''.join(cached[i]['image'].tobytes() + cached[i]['label'].tobytes()
                                 for i in range(len(cached))))
print('result', cached.directory, digest.hexdigest())
"""


def test_processes_opening_at_once_build_once_and_read_the_same(streets, tmp_path):
  cache_root = tmp_path / 'cache'
  processes = [subprocess.Popen([sys.executable, '-c', _OPEN_IN_A_PROCESS, str(streets),
                                 str(cache_root)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, 'PYTHONPATH': str(ROOT)})
               for _ in range(3)]
  outputs = [process.communicate(timeout=300)[0] for process in processes]
  assert [process.returncode for process in processes] == [0, 0, 0], outputs
  results = {line for output in outputs for line in output.splitlines()
             if line.startswith('result')}
  assert len(results) == 1, outputs
  assert sum(output.count('records: decoded') for output in outputs) == 1, outputs
  assert len(built_directories(cache_root)) == 1 and leftovers(cache_root) == []


def test_a_source_without_a_file_list_is_read_directly(tmp_path):
  listed = [{'image': np.zeros((2, 2, 3), np.uint8), 'label': np.zeros((2, 2), np.uint8),
             'name': 'a'}]
  lines = Lines()
  assert records.open_records(listed, tmp_path / 'cache', log=lines) is listed
  assert len(lines) == 1 and 'read directly' in lines[0]
  assert not (tmp_path / 'cache').exists()


def test_an_unwritable_cache_folder_is_one_line(streets, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  with pytest.raises(UserError, match=r'Cannot write the decoded-frame records.*=none'):
    open_quietly(street_source(streets), blocker / 'cache',
                 remedy=records.remedy_for('--records'))


def test_config_data_records_default_none_and_folder(tmp_path, monkeypatch):
  monkeypatch.setenv('BISENET_JAX_CACHE', str(tmp_path / 'env'))
  assert config_lib.records_dir('') == str(tmp_path / 'env' / 'records')
  assert config_lib.records_dir('none') is None and config_lib.records_dir('None') is None
  assert config_lib.records_dir(str(tmp_path / 'here')) == str(tmp_path / 'here')
  monkeypatch.delenv('BISENET_JAX_CACHE')
  assert config_lib.records_dir('') == os.path.expanduser('~/.cache/bisenet_jax/records')


def test_the_demo_trains_and_evaluates_from_records(tmp_path):
  config = config_lib.get_config('bisenetv1_r18', 'demo')
  with config.unlocked():
    config.data.root = str(tmp_path / 'demo')
    config.data.synthetic.update(num_train=2, num_val=1, height=32, width=64)
  config.data.records = str(tmp_path / 'cache')
  lines = Lines()
  train, val = sources.open_training_sources(config_lib.data_spec(config.data), log=lines)
  assert isinstance(train, records.FrameRecords) and isinstance(val, records.FrameRecords)
  assert len(train) == 2 and len(val) == 1 and len(lines) == 2
  config.data.records = 'none'
  train, val = sources.open_training_sources(config_lib.data_spec(config.data))
  assert isinstance(train, cityscapes.CityscapesFolder)


def test_the_pipeline_gives_the_same_batches_from_records(streets, tmp_path):
  from bisenet_jax.data import pipeline
  source = street_source(streets)
  cached = open_quietly(source, tmp_path / 'cache')
  options = dict(global_batch_size=2, seed=3, crop_size=(32, 32), resize_to=(48, 96),
                 scale_range=(0.75, 1.5))
  expected = next(pipeline.make_train_iterator(source, **options))
  got = next(pipeline.make_train_iterator(cached, **options))
  if not flags.FLAGS.is_parsed():  # grain's workers read absl flags, as train.py parses them.
    flags.FLAGS(['pytest'])
  in_worker = pipeline.make_train_iterator(cached, worker_count=1, **options)
  try:
    from_worker = next(in_worker)  # The worker maps the records itself.
  finally:
    in_worker.close()
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])
    np.testing.assert_array_equal(from_worker[key], expected[key])
  expected, got = (next(iter(pipeline.EvalBatches(s, batch_size=2, resize_to=None)))
                   for s in (source, cached))
  for key in ('image', 'label', 'valid'):
    np.testing.assert_array_equal(got[key], expected[key])
  assert got['name'] == expected['name']
