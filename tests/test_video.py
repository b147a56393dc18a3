"""Videos, cameras and streams: the pipeline (bisenet_jax.video) and ``predict`` on them.

The pipeline is checked with fake frames and models (order, nothing lost, skipping to keep up,
errors); ``predict`` end to end on small street-scene videos with the PyTorch reference's random
weights: mask and overlay videos, per-frame PNGs equal to the masks of the same frames predicted
as images, a stream that stops mid-way, and one-line errors.
"""

import collections
import errno
import functools
import http.server
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bisenet_jax import predict, video
from bisenet_jax.data.cityscapes import PALETTE
from bisenet_jax.data.synthetic import draw_street_scene
from bisenet_jax.errors import UserError
from labelled_files import read_rgb

SIZE = (64, 96)
# The frames' size as predict's test Resize target: the model sees them as they are.
KEEP_SIZE = ['--resize-to', f'{SIZE[0]}x{SIZE[1]}']
FRAMES = 6


class FakeSource(video.FrameSource):
  """Frames 0, 1, 2, ... (each a constant image of its index), ``delay`` seconds apart."""

  def __init__(self, count, live=False, delay=0.0, frame_count=None, shape=(4, 6)):
    super().__init__(None, 'fake', 'the fake source', live, 10.0, frame_count)
    self.count, self.delay, self.index, self.shape = count, delay, 0, shape

  def read(self):
    if self.index == self.count:
      return None
    time.sleep(self.delay)
    self.index += 1
    return np.full((*self.shape, 3), (self.index - 1) % 256, np.uint8)

  def close(self):
    pass


def collect(source, predict_fn, **options):
  written = []
  report = video.segment_stream(source, predict_fn,
                                lambda index, frame, labels: written.append((index, labels)),
                                **options)
  return report, written


def test_every_frame_of_a_file_is_segmented_in_order():
  report, written = collect(FakeSource(30), lambda frame: frame[..., 0] + 1)
  assert [index for index, _ in written] == list(range(30))
  assert all((labels == index + 1).all() for index, labels in written)
  assert (report.frames, report.skipped, report.ended_early) == (30, 0, False)
  assert len(report.model_s) == len(report.decode_s) == len(report.latency_s) == 30


def test_a_live_source_skips_late_frames_and_counts_them():
  slow_model = lambda frame: (time.sleep(0.03), frame[..., 0])[1]  # noqa: E731
  report, written = collect(FakeSource(40, live=True, delay=0.005), slow_model,
                            max_latency=0.01)
  indices = [index for index, _ in written]
  assert indices == sorted(indices) and len(set(indices)) == len(indices)
  assert report.skipped > 0 and report.frames + report.skipped == 40
  assert 'skipped to keep up' in report.lines(FakeSource(0, live=True))[0]


def test_a_file_that_stops_early_is_reported():
  report, _ = collect(FakeSource(5, frame_count=9), lambda frame: frame[..., 0])
  assert report.ended_early
  assert 'stopped after 5 of 9 frames' in '\n'.join(report.lines(FakeSource(0, frame_count=9)))


@pytest.mark.parametrize('stage', ['model', 'writer'])
def test_an_error_in_a_stage_reaches_the_caller(stage):
  def fail(*args):
    raise RuntimeError(f'{stage} failed')

  ok = lambda *args: args[-1][..., 0] if stage == 'writer' else None  # noqa: E731
  with pytest.raises(RuntimeError, match=f'{stage} failed'):
    video.segment_stream(FakeSource(50), fail if stage == 'model' else ok,
                         fail if stage == 'writer' else (lambda *args: None))


class BlockingCapture:
  """A capture whose reads after the first ``frames`` block until ``unblock`` is set."""

  def __init__(self, frames):
    self.frames, self.unblock, self.reading = frames, threading.Event(), False
    self.releases = []  # Whether a read was running, at each release.

  def read(self):
    if self.frames:
      self.frames -= 1
      return True, np.zeros((4, 6, 3), np.uint8)
    self.reading = True
    self.unblock.wait(10)
    self.reading = False
    return False, None

  def release(self):
    self.releases.append(self.reading)


def test_a_stalled_capture_is_released_only_after_its_read_returns():
  capture = BlockingCapture(frames=2)
  source = video.FrameSource(capture, 'camera9', 'camera 9', True, 10.0, None)

  def model(frame):  # Fails once the reader is stalled.
    while not capture.reading:
      time.sleep(0.01)
    raise RuntimeError('model failed')

  with pytest.raises(RuntimeError, match='model failed'):
    video.segment_stream(source, model, lambda *args: None)
  source.close()
  assert capture.reading and capture.releases == []  # Not released under a running read.
  capture.unblock.set()
  deadline = time.monotonic() + 2
  while not capture.releases and time.monotonic() < deadline:
    time.sleep(0.01)
  assert capture.releases == [False]


# The outputs of a stream: failures stop the run, and leave no partial file.

FAIL_AT = 3
TINY = (16, 24)


class FullDiskWriter:
  """A cv2.VideoWriter whose disk fills up at frame FAIL_AT: ``write`` returns False from there,
  as OpenCV 5's does."""

  def __init__(self, *args, make=cv2.VideoWriter):
    self.real, self.frames = make(*args), 0

  def isOpened(self):
    return self.real.isOpened()

  def write(self, frame):
    if self.frames == FAIL_AT:
      return False
    self.frames += 1
    return self.real.write(frame)

  def release(self):
    self.real.release()


def full_disk_png(write_index_png):
  """``masks.write_index_png`` on a disk that fills up at frame FAIL_AT: half a file, then
  ENOSPC (what Pillow raises)."""
  calls = []

  def write(path, labels, palette):
    calls.append(path)
    if len(calls) <= FAIL_AT:
      return write_index_png(path, labels, palette)
    Path(path).write_bytes(b'\x89PNG half')
    raise OSError(errno.ENOSPC, 'No space left on device')

  return write


@pytest.mark.parametrize('failing', ['video encoder', 'frame mask'])
def test_a_failing_writer_stops_the_run_at_once_and_leaves_no_partial_file(
    tmp_path, monkeypatch, failing):
  source = FakeSource(2000, frame_count=2000, shape=TINY)
  monkeypatch.setattr(predict, 'open_source', lambda item: source)
  if failing == 'video encoder':
    monkeypatch.setattr(cv2, 'VideoWriter', FullDiskWriter)
    monkeypatch.setattr(shutil, 'disk_usage',
                        lambda path: collections.namedtuple('Usage', 'total used free')(1, 1, 0))
    failed, reason = tmp_path / 'clip_mask.mp4', 'no space left on the device'
  else:
    monkeypatch.setattr(predict.masks, 'write_index_png',
                        full_disk_png(predict.masks.write_index_png))
    failed, reason = tmp_path / 'clip' / f'{FAIL_AT:06d}_mask.png', 'No space left on device'
  item = predict.Input('video', 'clip.mp4', Path('clip'))
  with pytest.raises(UserError) as error:
    predict.predict_stream(item, lambda frame: frame[..., 0] % 19, PALETTE, tmp_path,
                           predict.StreamOptions(overlay=True, frame_masks=True))
  # Stopped within the frames already queued, not at the end of the file.
  assert source.index <= FAIL_AT + 2 * video._QUEUE_FRAMES + 4, source.index
  message = str(error.value)
  assert '\n' not in message and str(failed) in message and reason in message, message
  left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*') if p.is_file())
  # The frame masks written whole before the failure stay; no video, temporary or half file.
  assert left == [f'clip/{index:06d}_mask.png' for index in range(FAIL_AT)]


class ReleaseRecorder:
  """Wraps a cv2.VideoWriter: records its release, and raises after it if ``fail``."""

  def __init__(self, writer, fail):
    self.writer, self.fail, self.released = writer, fail, False

  def write(self, frame):
    return self.writer.write(frame)

  def release(self):
    self.writer.release()
    self.released = True
    if self.fail:
      raise RuntimeError('release failed')


def test_a_close_that_fails_still_finishes_every_video_and_removes_them(tmp_path):
  outputs = predict.StreamOutputs(tmp_path, predict.Input('video', 'clip.mp4', Path('clip')),
                                  10.0, PALETTE, overlay=True, frame_masks=False)
  for index in range(3):
    outputs.write(index, np.zeros((*TINY, 3), np.uint8), np.full(TINY, index, np.uint8))
  writers = {kind: ReleaseRecorder(file.writer, fail=kind == 'mask')
             for kind, file in outputs.videos.items()}
  for kind, file in outputs.videos.items():
    file.writer = writers[kind]
  with pytest.raises(RuntimeError, match='release failed'):
    outputs.close(keep=True)
  assert all(writer.released for writer in writers.values())
  assert list(tmp_path.iterdir()) == []  # Neither video kept, no temporary left.


def test_a_video_the_encoder_could_not_finish_is_not_installed(tmp_path):
  file = video.VideoFile(tmp_path / 'clip_mask.mp4', 10.0, TINY)
  for index in range(3):
    file.write(np.full((*TINY, 3), 40 * index, np.uint8))
  file.finish()
  file.temporary.write_bytes(file.temporary.read_bytes()[:100])  # What a full disk leaves.
  with pytest.raises(UserError, match='the encoder could not finish it'):
    file.close(keep=True)
  assert list(tmp_path.iterdir()) == []


# predict on real video files.

def write_video(path, count=FRAMES, fourcc='mp4v', fps=5.0):
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, SIZE[::-1])
  assert writer.isOpened()
  for index in range(count):
    image, _ = draw_street_scene(np.random.default_rng(index), *SIZE)
    writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


def decoded_frames(path):
  capture = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = capture.read()
    if not ok:
      return frames, capture.get(cv2.CAP_PROP_FPS)
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def test_a_video_gives_mask_and_overlay_videos_and_frame_masks_equal_to_image_masks(
    random_r18_pth, tmp_path, capsys):
  clip = write_video(tmp_path / 'clip.mp4')
  predict.main(['--checkpoint', str(random_r18_pth), str(clip), '--output', str(tmp_path / 'out'),
                '--overlay', '--frame-masks', *KEEP_SIZE])
  report = capsys.readouterr().out
  assert f'clip.mp4: {FRAMES} frame(s)' in report and 'frames/s end to end' in report
  assert 'decode' in report and 'model' in report and 'encode' in report and 'p90' in report
  mask_frames, fps = decoded_frames(tmp_path / 'out' / 'clip_mask.mp4')
  overlay_frames, _ = decoded_frames(tmp_path / 'out' / 'clip_overlay.mp4')
  assert len(mask_frames) == len(overlay_frames) == FRAMES and fps == pytest.approx(5.0)
  assert mask_frames[0].shape == (*SIZE, 3)
  # The same frames, decoded and saved as PNGs, predicted as images.
  frames, _ = decoded_frames(clip)
  for index, frame in enumerate(frames):
    cv2.imwrite(str(tmp_path / f'{index:06d}.png'), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  predict.main(['--checkpoint', str(random_r18_pth), *[str(tmp_path / f'{i:06d}.png')
                                                   for i in range(FRAMES)],
                '--output', str(tmp_path / 'images'), *KEEP_SIZE])
  for index in range(FRAMES):
    frame_mask = read_rgb(tmp_path / 'out' / 'clip' / f'{index:06d}_mask.png')
    np.testing.assert_array_equal(frame_mask,
                                  read_rgb(tmp_path / 'images' / f'{index:06d}_mask.png'))
  assert len({tuple(c) for c in frame_mask.reshape(-1, 3)}) >= 2
  assert {tuple(c) for c in frame_mask.reshape(-1, 3)} <= {tuple(c) for c in PALETTE}
  # The mask video shows those colours (mp4v is lossy: compare on average).
  assert np.abs(mask_frames[-1].astype(int) - frame_mask).mean() < 12


class _CutShortHandler(http.server.SimpleHTTPRequestHandler):
  """Serves files, but sends only the first half of each and then drops the connection."""

  def copyfile(self, source, output):
    data = source.read()
    output.write(data[:len(data) // 2])

  def log_message(self, *args):
    pass


def test_a_stream_that_stops_keeps_what_was_written(random_r18_pth, tmp_path, capsys):
  write_video(tmp_path / 'cam1.avi', count=12, fourcc='MJPG')
  handler = functools.partial(_CutShortHandler, directory=str(tmp_path))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    url = f'http://127.0.0.1:{server.server_address[1]}/cam1.avi'
    predict.main(['--checkpoint', str(random_r18_pth), url, '--output', str(tmp_path / 'out'),
                  *KEEP_SIZE])
  finally:
    server.shutdown()
  report = capsys.readouterr().out
  written, _ = decoded_frames(tmp_path / 'out' / 'cam1_mask.mp4')
  assert 0 < len(written) < 12
  assert f'{url}: {len(written)} frame(s)' in report
  assert f'the stream ended after {len(written)} frames' in report
  assert not list((tmp_path / 'out').glob('.*'))  # No temporary file left.


@pytest.mark.parametrize('case, expected', [
    ('not a video', 'OpenCV cannot open'),
    ('no camera', 'OpenCV cannot open camera 97: no such camera'),
    ('unwritable output', 'Cannot write'),
    ('video name taken by a folder', 'Cannot write the video'),
    ('video name too long', 'OpenCV cannot write the video'),
    ('latency for a file', '--max-latency-ms takes a positive number and applies to cameras'),
])
def test_bad_streams_are_one_line_errors_and_write_no_video(random_r18_pth, tmp_path, capsys, case,
                                                            expected):
  args = ['--checkpoint', str(random_r18_pth), '--output', str(tmp_path / 'out'), *KEEP_SIZE]
  if case == 'not a video':
    (tmp_path / 'clip.mp4').write_bytes(b'not a video')
    args.append(str(tmp_path / 'clip.mp4'))
  elif case == 'no camera':
    args += ['--camera', '97']
  elif case == 'unwritable output':
    (tmp_path / 'file').write_text('a file, not a folder')
    args = ['--checkpoint', str(random_r18_pth), '--output', str(tmp_path / 'file'),
            str(write_video(tmp_path / 'clip.mp4', count=2)), *KEEP_SIZE]
  elif case == 'video name taken by a folder':
    (tmp_path / 'out' / 'clip_mask.mp4').mkdir(parents=True)
    args.append(str(write_video(tmp_path / 'clip.mp4', count=2)))
  elif case == 'video name too long':
    args.append(str(write_video(tmp_path / f'{"c" * 240}.mp4', count=2)))
  else:
    args += [str(write_video(tmp_path / 'clip.mp4', count=2)), '--max-latency-ms', '100']
  with pytest.raises(SystemExit) as exit_info:
    predict.main(args)
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.count('\n') == 1 and expected in error, error
  assert not [p for p in tmp_path.rglob('*_mask.mp4') if p.is_file()]
  assert not list(tmp_path.rglob('.*.tmp.mp4'))
