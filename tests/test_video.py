"""Videos, cameras and streams: the pipeline (bisenet_jax.video) and ``predict`` on them.

The pipeline is checked with fake frames and models (order, nothing lost, skipping to keep up,
errors); ``predict`` end to end on small street-scene videos with the PyTorch reference's random
weights: mask and overlay videos, per-frame PNGs equal to the masks of the same frames predicted
as images, a stream that stops mid-way, and one-line errors.
"""

import functools
import http.server
import threading
import time

import cv2
import numpy as np
import pytest

from bisenet_jax import predict, video
from bisenet_jax.data.cityscapes import PALETTE
from bisenet_jax.data.synthetic import draw_street_scene
from labelled_files import read_rgb

SIZE = (64, 96)
FRAMES = 6


class FakeSource(video.FrameSource):
  """Frames 0, 1, 2, ... (each a constant image of its index), ``delay`` seconds apart."""

  def __init__(self, count, live=False, delay=0.0, frame_count=None):
    super().__init__(None, 'fake', 'the fake source', live, 10.0, frame_count)
    self.count, self.delay, self.index = count, delay, 0

  def read(self):
    if self.index == self.count:
      return None
    time.sleep(self.delay)
    self.index += 1
    return np.full((4, 6, 3), self.index - 1, np.uint8)

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
                '--overlay', '--frame-masks'])
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
                '--output', str(tmp_path / 'images')])
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
    predict.main(['--checkpoint', str(random_r18_pth), url, '--output', str(tmp_path / 'out')])
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
  args = ['--checkpoint', str(random_r18_pth), '--output', str(tmp_path / 'out')]
  if case == 'not a video':
    (tmp_path / 'clip.mp4').write_bytes(b'not a video')
    args.append(str(tmp_path / 'clip.mp4'))
  elif case == 'no camera':
    args += ['--camera', '97']
  elif case == 'unwritable output':
    (tmp_path / 'file').write_text('a file, not a folder')
    args = ['--checkpoint', str(random_r18_pth), '--output', str(tmp_path / 'file'),
            str(write_video(tmp_path / 'clip.mp4', count=2))]
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
