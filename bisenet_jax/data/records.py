"""Decoded-frame records: every sample of a source decoded once into raw uint8 arrays on disk,
then served as memory-maps, so reading a frame costs a page-cache copy instead of a PNG decode.

Layout, one directory per source and key under the cache root::

  <cache root>/<kind>-<split>-<family>-<key>/images.u8   the RGB images, uint8 [H, W, 3] each
                                            /labels.u8   the labels, uint8 [H, W] each
                                            /index.json  names, shapes, byte offsets, the key
  <cache root>/.lock                                     held while a build runs

Why raw memory-maps: a sample is a slice of one mapped file, so `__getitem__` copies nothing
and a crop reads only the pages it keeps (`image[rows, cols]` on the map), which is what the
training transforms want. ArrayRecord (in the environment for TFDS) stores each record as a
byte string that must be copied out (and possibly decompressed) whole before NumPy can view
it, which is the cost this cache removes. Raw arrays take more disk (8 MiB per 1024x2048
frame with its label, page-aligned), which is the price of reading nothing a crop leaves out.
Two files for the whole split rather than one `.npy` per sample: one map per process, one
fsync per file, and a directory that is complete exactly when its index is there.

A cache that cannot lie:

* The key is a SHA-256 of the source's own description (`source.record_key()`: its kind, the
  resolved root, the split, the label mapping, the names, and the relative path, size and
  mtime_ns of every file it reads), this format's version and the decoders' versions. Any
  touched, changed, added or removed file gives another key, hence a build; the full
  description is stored in `index.json` and compared on opening, not only its hash. The
  content is not hashed (reading 20 GiB to check it would cost what the cache saves): a file
  rewritten with the same size and mtime is not noticed, as with make or rsync.
* A build writes into `.building-*` inside the cache root, fsyncs the arrays, writes
  `index.json` last, fsyncs it and the directory, and renames the directory into place. A
  directory without a complete, matching `index.json` or with files of the wrong size is never
  used: it is removed and rebuilt.
* Builds take an exclusive `flock` on `<cache root>/.lock`, so concurrent processes build a
  key once (the others wait, then open it) and every `.building-*` found while holding it was
  left by a killed build and is removed. Without locks (a file system that has none) the rename
  still decides: the first complete directory wins, the loser discards its copy.
* Before a build, directories of the same source (same kind, root, split and label mapping)
  under other keys are removed: its files changed (or the format or a decoder did), so they can
  never be read again. A run that still has them open keeps reading them (an unlinked file
  lives while it is mapped). Records of the same files under another label mapping are kept.
* The free space is checked against the exact size first; a full disk, then or during the
  write, is one `UserError` naming the directory, the bytes needed and how to move or turn off
  the cache, and leaves no temporary files.

Sources without `record_key()` (TFDS, which is already an ArrayRecord file set and has no file
list to key on) are not cached: `open_records` returns them as they are, with a printed note.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import PIL
from tqdm import tqdm

from bisenet_jax.errors import UserError

FORMAT_VERSION = 1
IMAGES_FILE = 'images.u8'
LABELS_FILE = 'labels.u8'
INDEX_FILE = 'index.json'
LOCK_FILE = '.lock'
BUILDING_PREFIX = '.building-'
_REMOVING_PREFIX = '.removing-'
# Samples start on page boundaries, so a frame's rows never share a page with another frame.
ALIGNMENT = 4096
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def describe_files(root, paths):
  """`[[relative path, size, mtime_ns], ...]` of `paths` below `root`, for a `record_key()`.

  Raises:
    UserError: a file went missing since the source listed it.
  """
  root = Path(root)
  entries = []
  for path in paths:
    path = Path(path)
    try:
      stat = path.stat()
    except OSError as error:
      raise UserError(f'Cannot read {path} ({error.strerror or error}): the dataset changed '
                      'while it was being opened; run again') from None
    relative = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    entries.append([relative, stat.st_size, stat.st_mtime_ns])
  return entries


def open_records(source, cache_root, *, remedy=None, log=print, progress=None):
  """`source` served from decoded-frame records under `cache_root`, built first if needed.

  Args:
    source: a random-access source with `record_key()` (a JSON-able description holding at
      least 'names' and 'files', see `describe_files`) and `image_sizes()`; any other source is
      returned as it is, with a note through `log`.
    cache_root: the cache folder (created if missing).
    remedy: how to move the cache or turn it off, for messages; default:
      `remedy_for('--config.data.records')`.
    log: prints a line (the note, a wait for another build, the build's summary).
    progress: show a progress bar while building; None: when stderr is a terminal.

  Returns:
    A `FrameRecords`, or `source` itself when it cannot describe its files.

  Raises:
    UserError: the cache folder cannot be written or has too little space, or reading a
      sample failed (the source's own message).
  """
  if not (callable(getattr(source, 'record_key', None)) and hasattr(source, 'image_sizes')):
    log(f'records: {type(source).__name__} has no file list to key a cache on, so it is read '
        'directly')
    return source
  remedy = remedy or remedy_for('--config.data.records')
  description = source.record_key()
  key, family = record_keys(description)
  cache_root = Path(cache_root).expanduser().absolute()
  directory = cache_root / directory_name(description, family, key)
  records = _open_complete(directory, key, description)
  if records is not None:
    return records
  _make_folder(cache_root, remedy)
  with _build_lock(cache_root, log) as locked:
    records = _open_complete(directory, key, description)  # Built while this process waited.
    if records is not None:
      return records
    _remove_stale(cache_root, directory, family, abandoned_builds=locked)
    return build(source, description, directory, remedy=remedy, log=log, progress=progress)


def record_keys(description):
  """(key, family) of a source description: the key covers everything the arrays depend on;
  the family is the source without its files, names, this format's and the decoders' versions
  (the same source, whatever its files hold now and whichever code decoded them)."""
  key = _digest({'format': FORMAT_VERSION, 'opencv': cv2.__version__,
                 'pillow': PIL.__version__, 'source': description})
  family = _digest({name: value for name, value in description.items()
                    if name not in ('files', 'names')})
  return key, family


def directory_name(description, family, key):
  """`<kind>-<split>-<family 12 hex>-<key 12 hex>`: readable, and parsed by `_parse_name`."""
  label = '-'.join(str(description.get(field, '')) for field in ('source', 'split'))
  label = re.sub(r'[^a-z0-9_]+', '_', label.lower()).strip('_') or 'source'
  return f'{label}-{family[:12]}-{key[:12]}'


class FrameRecords:
  """Random-access source over a built records directory: samples as the source's, with
  'image' and 'label' read-only views of memory-maps (nothing is read until indexed).

  It pickles as the directory and the index (the maps are reopened), so grain's worker
  processes map the files themselves.

  Attributes:
    directory: the records directory.
    names: the source's sample names, in its order.
  """

  def __init__(self, directory, index=None):
    """Opens `directory` (whose `index.json` is read unless `index` is given)."""
    self.directory = Path(directory)
    index = index if index is not None else read_index(self.directory)
    self.names = tuple(index['names'])
    self._shapes = np.asarray(index['shapes'], np.int64).reshape(-1, 2)
    self._image_offsets = np.asarray(index['image_offsets'], np.int64)
    self._label_offsets = np.asarray(index['label_offsets'], np.int64)
    self._map()

  def _map(self):
    self._images = np.memmap(self.directory / IMAGES_FILE, np.uint8, mode='r')
    self._labels = np.memmap(self.directory / LABELS_FILE, np.uint8, mode='r')

  def __getstate__(self):
    return {name: value for name, value in self.__dict__.items()
            if name not in ('_images', '_labels')}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._map()

  def __len__(self):
    return len(self.names)

  def __getitem__(self, index):
    """Returns `{'image': uint8 [H, W, 3] RGB, 'label': uint8 [H, W], 'name': str}`, the arrays
    read-only `np.memmap` views."""
    name = self.names[index]  # IndexError past the end, as the sources.
    height, width = (int(side) for side in self._shapes[index])
    image_at, label_at = int(self._image_offsets[index]), int(self._label_offsets[index])
    pixels = height * width
    return {'image': self._images[image_at:image_at + 3 * pixels].reshape(height, width, 3),
            'label': self._labels[label_at:label_at + pixels].reshape(height, width),
            'name': name}

  def image_sizes(self):
    """(height, width) of every sample, from the index."""
    return [(int(height), int(width)) for height, width in self._shapes]


def read_index(directory):
  """The parsed `index.json` of a records directory (OSError or ValueError if unreadable)."""
  return json.loads((Path(directory) / INDEX_FILE).read_text())


def plan_index(description, sizes, key):
  """The index of a build: names, shapes and page-aligned offsets, before anything is decoded."""
  shapes = [[int(height), int(width)] for height, width in sizes]
  names = list(description['names'])
  if len(names) != len(shapes):
    raise ValueError(f'{len(names)} names but {len(shapes)} image sizes')
  image_offsets, images_bytes = _offsets([3 * h * w for h, w in shapes])
  label_offsets, labels_bytes = _offsets([h * w for h, w in shapes])
  return {'format': FORMAT_VERSION, 'key': key, 'description': description, 'names': names,
          'shapes': shapes, 'image_offsets': image_offsets, 'label_offsets': label_offsets,
          'images_bytes': images_bytes, 'labels_bytes': labels_bytes}


def bytes_needed(index, index_text):
  """The disk space a build takes: both arrays and the index, in whole pages."""
  return index['images_bytes'] + index['labels_bytes'] + _aligned(len(index_text))


def build(source, description, directory, *, remedy=None, log=print, progress=None,
          max_workers=None):
  """Decodes every sample of `source` into `directory` (see the module docstring).

  Callers hold the build lock (`open_records` does); without it the rename still keeps two
  builds from mixing: the second finds the directory in place and discards its own copy.

  Returns:
    The `FrameRecords` of `directory`.

  Raises:
    UserError: not enough space (before or during the write), the folder cannot be written,
      or a sample cannot be read (the source's message). Nothing is left behind.
  """
  directory = Path(directory)
  cache_root = directory.parent
  remedy = remedy or remedy_for('--config.data.records')
  started = time.perf_counter()
  key = record_keys(description)[0]
  index = plan_index(description, source.image_sizes(), key)
  index_text = json.dumps(index, separators=(',', ':'))
  needed = bytes_needed(index, index_text)
  try:
    free = shutil.disk_usage(cache_root).free
  except OSError as error:
    raise UserError(_cannot_write(cache_root, error, remedy)) from None
  if needed > free:
    raise UserError(_no_space_message(directory, needed, free, remedy))
  staging = None
  try:
    staging = Path(tempfile.mkdtemp(prefix=f'{BUILDING_PREFIX}{directory.name}-',
                                    dir=cache_root))
    _write_arrays(source, index, staging, progress, max_workers)
    _write_synced(staging / INDEX_FILE, index_text.encode())
    _fsync_directory(staging)
    if not _publish(staging, directory):
      staging = None  # Removed by _publish.
      log(f'records: {directory} was built by another process meanwhile; using it')
      records = _open_complete(directory, key, description)
      if records is None:
        raise UserError(f'The records {directory} are being replaced by another process: run '
                        f'again, or {remedy}')
      return records
    staging = None
    _fsync_directory(cache_root)
  except OSError as error:
    if error.errno in _NO_SPACE:
      raise UserError(_no_space_message(directory, needed, None, remedy)) from None
    raise UserError(_cannot_write(cache_root, error, remedy)) from None
  finally:
    if staging is not None:
      shutil.rmtree(staging, ignore_errors=True)
  seconds = time.perf_counter() - started
  log(f'records: decoded {len(index["names"])} samples into {directory} in {seconds:.1f} s, '
      f'{_format_bytes(disk_usage(directory))} on disk')
  return FrameRecords(directory, index)


def disk_usage(directory):
  """Bytes the files of `directory` take on disk (allocated blocks)."""
  return sum(path.stat().st_blocks * 512 for path in Path(directory).iterdir())


def _write_arrays(source, index, staging, progress, max_workers):
  """Decodes the samples in threads (OpenCV and Pillow decode without the GIL) and writes each
  at its offset, then fsyncs both files. The first failure stops the rest and is raised."""
  count = len(index['names'])
  max_workers = max_workers or min(8, os.cpu_count() or 1)
  stop = threading.Event()
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0)
  with contextlib.ExitStack() as stack:
    image_fd = os.open(staging / IMAGES_FILE, flags, 0o644)
    stack.callback(os.close, image_fd)
    label_fd = os.open(staging / LABELS_FILE, flags, 0o644)
    stack.callback(os.close, label_fd)

    def write(position):
      if stop.is_set():
        return
      sample = source[position]
      _check_sample(sample, index, position)
      _write_at(image_fd, sample['image'], index['image_offsets'][position])
      _write_at(label_fd, sample['label'], index['label_offsets'][position])

    pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max_workers))
    bar = stack.enter_context(tqdm(total=count, unit='frame', desc='decoding into records',
                                   file=sys.stderr, dynamic_ncols=True,
                                   disable=None if progress is None else not progress))
    futures = [pool.submit(write, position) for position in range(count)]
    try:
      for future in concurrent.futures.as_completed(futures):
        future.result()
        bar.update()
    except BaseException:
      stop.set()
      for future in futures:
        future.cancel()
      raise
    # The last sample's page padding is never written: size the files to whole pages.
    os.ftruncate(image_fd, index['images_bytes'])
    os.ftruncate(label_fd, index['labels_bytes'])
    os.fsync(image_fd)
    os.fsync(label_fd)


def _check_sample(sample, index, position):
  """A decoded sample must be what the plan (from the file headers) expects."""
  height, width = index['shapes'][position]
  image, label = sample['image'], sample['label']
  if (image.shape != (height, width, 3) or label.shape != (height, width)
      or image.dtype != np.uint8 or label.dtype != np.uint8
      or sample['name'] != index['names'][position]):
    raise UserError(
        f'Sample {position} ({sample["name"]}) decoded to image {image.shape} {image.dtype}, '
        f'label {label.shape} {label.dtype}, but its files announced {height}x{width}: the file '
        'changed while the records were built, or its header is wrong; run again, or re-save it')


def _write_at(fd, array, offset):
  """Writes the bytes of `array` at `offset`, however many calls pwrite needs."""
  data = memoryview(np.ascontiguousarray(array)).cast('B')
  while data:
    written = os.pwrite(fd, data, offset)
    data, offset = data[written:], offset + written


def _write_synced(path, data):
  with open(path, 'xb') as handle:
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


def _fsync_directory(path):
  """Makes a rename or new entry in `path` durable (a no-op where directories cannot be synced)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _publish(staging, directory):
  """Renames the complete `staging` to `directory`; False if another build put it there first
  (then `staging` is removed)."""
  try:
    os.rename(staging, directory)
    return True
  except OSError as error:
    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
      raise
  shutil.rmtree(staging, ignore_errors=True)
  return False


def _open_complete(directory, key, description):
  """The `FrameRecords` of `directory` if it is complete and built for `key`, else None."""
  try:
    index = read_index(directory)
    complete = (index.get('format') == FORMAT_VERSION and index.get('key') == key
                and index.get('description') == json.loads(json.dumps(description))
                and (directory / IMAGES_FILE).stat().st_size == index['images_bytes']
                and (directory / LABELS_FILE).stat().st_size == index['labels_bytes'])
    return FrameRecords(directory, index) if complete else None
  except (OSError, ValueError, KeyError, TypeError):
    return None


@contextlib.contextmanager
def _build_lock(cache_root, log):
  """Holds an exclusive flock on `<cache_root>/.lock`; yields whether it is held (False where
  the file system has no locks: then only the rename keeps builds apart)."""
  try:
    fd = os.open(cache_root / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, 'O_CLOEXEC', 0),
                 0o644)
  except OSError:
    yield False
    return
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      locked = True
    except BlockingIOError:
      log(f'records: waiting for another process building records in {cache_root}')
      fcntl.flock(fd, fcntl.LOCK_EX)
      locked = True
    except OSError:  # ENOLCK, EOPNOTSUPP: no locks here.
      locked = False
    yield locked
  finally:
    os.close(fd)  # Releases the lock.


def _remove_stale(cache_root, directory, family, abandoned_builds):
  """Removes what can never be read again: an incomplete `directory`, the same source's
  directories under other keys and, when the build lock is held, every `.building-*` (a killed
  build's) and `.removing-*`."""
  for entry in cache_root.iterdir():
    name = entry.name
    if name.startswith((BUILDING_PREFIX, _REMOVING_PREFIX)):
      if abandoned_builds:
        shutil.rmtree(entry, ignore_errors=True)
      continue
    parsed = _parse_name(name)
    if entry.is_dir() and (entry == directory or (parsed and parsed[0] == family[:12])):
      _remove_directory(entry)


def _parse_name(name):
  """(family prefix, key prefix) of a records directory's name, or None."""
  match = re.fullmatch(r'.+-([0-9a-f]{12})-([0-9a-f]{12})', name)
  return match.groups() if match else None


def _remove_directory(path):
  """Renames `path` aside (it stops looking like records at once), then deletes it."""
  aside = path.with_name(f'{_REMOVING_PREFIX}{path.name}-{os.getpid()}')
  try:
    os.rename(path, aside)
  except OSError:
    return
  shutil.rmtree(aside, ignore_errors=True)


def _make_folder(cache_root, remedy):
  try:
    cache_root.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise UserError(_cannot_write(cache_root, error, remedy)) from None


def _offsets(sizes):
  """Page-aligned start of each of `sizes`, and the file's size (whole pages)."""
  offsets, total = [], 0
  for size in sizes:
    offsets.append(total)
    total += _aligned(size)
  return offsets, total


def _aligned(size):
  return -(-size // ALIGNMENT) * ALIGNMENT


def _digest(value):
  return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(',', ':'))
                        .encode()).hexdigest()


def _format_bytes(count):
  return f'{count / 2**30:.2f} GiB' if count >= 2**30 else f'{count / 2**20:.1f} MiB'


def remedy_for(flag):
  """How to move the cache or turn it off with the setting `flag`, for messages."""
  return f'set {flag}=DIR on a disk with room, or {flag}=none to read the files directly'


def _no_space_message(directory, needed, free, remedy):
  have = f', {free:,} free' if free is not None else ' and the disk filled up'
  return (f'Not enough disk space for the decoded-frame records {directory}: they need '
          f'{needed:,} bytes ({_format_bytes(needed)}){have}; free space there, or {remedy}')


def _cannot_write(cache_root, error, remedy):
  return (f'Cannot write the decoded-frame records in {cache_root} '
          f'({getattr(error, "strerror", None) or error}): {remedy}')
