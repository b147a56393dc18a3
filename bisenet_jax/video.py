"""Segmenting a stream of frames: a video file, a camera or a stream URL, in a pipeline.

Three stages run at once: a reader thread decodes frames (OpenCV's FFmpeg backend), the calling
thread runs the model, a writer thread colours the masks and encodes them (mask and overlay
videos, optionally each frame's mask as a PNG). Bounded queues between them keep memory flat and
frames in order, and a full queue makes the stage before it wait, so every frame is segmented.
A camera or a URL given a ``max_latency`` does not wait for the model instead: its reader
replaces the oldest waiting frame when the queue is full, and the model skips frames that waited
longer than ``max_latency``; skipped frames are counted and not written. Each stage is timed per
frame, and every frame's latency from read to written.

Free of JAX: ``predict`` runs exported ``.onnx`` files through it on ONNX Runtime too.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import fractions
import math
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from bisenet_jax.errors import UserError

VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.mov', '.m4v', '.webm', '.mpg', '.mpeg', '.wmv')
URL_SCHEMES = ('rtsp://', 'rtmp://', 'http://', 'https://', 'udp://', 'tcp://')
FOURCC = 'mp4v'  # MPEG-4 part 2 in an .mp4: what OpenCV's bundled FFmpeg encodes everywhere.
_LIVE_FPS = 30.0  # Written when a camera or stream does not say its frame rate.
_QUEUE_FRAMES = 4
# How long a finished run waits for its reader; one stalled in a read is left behind (the
# capture is released when that read returns: FrameSource).
_READER_GRACE_S = 1.0
_END = None


def is_url(text: str) -> bool:
  return text.lower().startswith(URL_SCHEMES)


def is_video(path: Path) -> bool:
  return path.suffix.lower() in VIDEO_SUFFIXES


@dataclasses.dataclass
class FrameSource:
  """An opened video file, camera or stream.

  A capture is never released while a read on it runs (OpenCV's capture is not thread-safe and
  a stalled camera or stream can block a read for long): ``close`` during a read leaves the
  release to that read, when it returns.

  Attributes:
    capture: the ``cv2.VideoCapture``.
    name: what the outputs are named after ('clip' for clip.mp4, 'camera0', the URL's stem).
    description: how messages name it (the path, 'camera 0' or the URL).
    live: a camera or URL, whose frames come whether or not the model keeps up.
    fps: the frame rate to write (the source's, else 30 for live sources).
    frame_count: how many frames a file says it has (None for live sources).
  """
  capture: cv2.VideoCapture
  name: str
  description: str
  live: bool
  fps: float
  frame_count: int | None
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, init=False,
                                            repr=False)
  _reading: bool = dataclasses.field(default=False, init=False, repr=False)
  _closed: bool = dataclasses.field(default=False, init=False, repr=False)

  def read(self) -> np.ndarray | None:
    """The next frame as uint8 [H, W, 3] RGB, or None at the end (or once closed)."""
    with self._lock:
      if self._closed:
        return None
      self._reading = True
    try:
      ok, frame = self.capture.read()
    finally:
      with self._lock:
        self._reading = False
        closed = self._closed
    if closed:  # ``close`` came during the read and left the release to it.
      self.capture.release()
      return None
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None

  def close(self) -> None:
    with self._lock:
      self._closed = True
      if self._reading:
        return
    self.capture.release()


def open_video(path: Path) -> FrameSource:
  """A video file; a file OpenCV cannot open or whose first frame it cannot decode is refused."""
  if not path.is_file():
    raise UserError(f'Input {path} does not exist')
  return _opened(cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), path.stem, str(path), live=False,
                 remedy='is it a video in a format FFmpeg reads (.mp4, .avi, .mkv, .mov)?')


def url_stem(url: str) -> str:
  """What a stream's outputs are named after: its path's last part ('cam1' for .../cam1)."""
  return Path(url.split('?')[0].split('://', 1)[-1].rstrip('/')).stem or 'stream'


def open_url(url: str) -> FrameSource:
  return _opened(cv2.VideoCapture(url, cv2.CAP_FFMPEG), url_stem(url), url, live=True,
                 remedy='check the address and that the stream is running')


def open_camera(index: int) -> FrameSource:
  return _opened(cv2.VideoCapture(index), f'camera{index}', f'camera {index}', live=True,
                 remedy='no such camera on this machine; list them with v4l2-ctl --list-devices')


def _opened(capture: cv2.VideoCapture, name: str, description: str, *, live: bool,
            remedy: str) -> FrameSource:
  if not capture.isOpened():
    raise UserError(f'OpenCV cannot open {description}: {remedy}')
  fps = capture.get(cv2.CAP_PROP_FPS)
  count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
  return FrameSource(capture, name, description, live,
                     fps if math.isfinite(fps) and fps > 0 else _LIVE_FPS,
                     None if live or count <= 0 else count)


class _StagedVideo(abc.ABC):
  """A video written under a temporary name, renamed into place only when complete.

  ``close(keep)`` finishes it; several files that belong together are finished with ``finish``
  (all of them), then ``install``-ed, and ``discard`` removes whatever was not installed.
  """

  def __init__(self, path: Path):
    self.path = path
    self.temporary = path.with_name(f'.{path.stem}.{os.getpid()}.tmp{path.suffix}')
    self.frames = 0

  @abc.abstractmethod
  def finish(self) -> None:
    """Ends the encoding: the temporary file is complete (or as complete as it will get)."""

  def _check_finished(self) -> None:
    """Raises a UserError if the finished temporary file is not whole."""

  def install(self) -> None:
    """Renames the finished file into place (if it holds a frame)."""
    if not self.frames:
      return
    self._check_finished()
    try:
      os.replace(self.temporary, self.path)
    except OSError as e:
      raise UserError(f'Cannot write the video {self.path} ({e.strerror}): choose another '
                      'folder or name') from e

  def discard(self) -> None:
    """Removes the temporary file (nothing once installed)."""
    with contextlib.suppress(OSError):
      self.temporary.unlink(missing_ok=True)

  def close(self, keep: bool) -> None:
    """Finishes the file; ``keep`` installs it, otherwise (or on any error) it is removed."""
    try:
      self.finish()
      if keep:
        self.install()
    finally:
      self.discard()


class VideoFile(_StagedVideo):
  """An .mp4 written with OpenCV (mp4v)."""

  def __init__(self, path: Path, fps: float, size: tuple[int, int]):
    super().__init__(path)
    self.writer = cv2.VideoWriter(str(self.temporary), cv2.VideoWriter_fourcc(*FOURCC), fps,
                                  (size[1], size[0]))
    if not self.writer.isOpened():
      self.discard()  # A name the file system refuses was never created.
      raise UserError(f'OpenCV cannot write the video {path} ({FOURCC} in .mp4): check that '
                      'the folder is writable and the name ends in .mp4')

  def write(self, rgb: np.ndarray) -> None:
    # OpenCV 5 says when the encoder could not write a frame (a full disk); OpenCV 4 returns
    # None and only the check before installing notices.
    if self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)) is False:
      raise UserError(f'Cannot write the video {self.path}: the encoder failed on frame '
                      f'{self.frames} ({_why_not_written(self.path.parent, rgb.nbytes)})')
    self.frames += 1

  def finish(self) -> None:
    self.writer.release()

  def _check_finished(self) -> None:
    if _frames_in(self.temporary) != self.frames:
      raise UserError(f'Cannot write the video {self.path}: the encoder could not finish it '
                      f'({_why_not_written(self.path.parent, 0)})')


class Y4MFile(_StagedVideo):
  """Uncompressed YUV4MPEG2 (.y4m): a text header, then each frame as 'FRAME' and I420 planes.

  What browsers take as a fake camera (Chrome's --use-file-for-fake-video-capture); sides must
  be even (the colour planes are subsampled 2x2).
  """

  def __init__(self, path: Path, fps: float, size: tuple[int, int]):
    super().__init__(path)
    if size[0] % 2 or size[1] % 2:
      raise UserError(f'Cannot write the video {path}: .y4m (I420) needs an even height and '
                      f'width, not {size[0]}x{size[1]}')
    rate = fractions.Fraction(fps).limit_denominator(1001)
    self.size, self.file = size, None
    self.file = self._io(lambda: self.temporary.open('wb'))
    self._io(lambda: self.file.write(f'YUV4MPEG2 W{size[1]} H{size[0]} F{rate.numerator}:'
                                     f'{rate.denominator} Ip A1:1 C420jpeg\n'.encode()))

  def write(self, rgb: np.ndarray) -> None:
    if rgb.shape[:2] != self.size:
      raise ValueError(f'frame of {rgb.shape[:2]} in a video of {self.size}')
    planes = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    self._io(lambda: self.file.write(b'FRAME\n' + planes.tobytes()))
    self.frames += 1

  def finish(self) -> None:
    if not self.file.closed:
      self._io(self.file.close)

  def _io(self, action: Callable):
    """Runs a file operation; an OSError becomes a UserError naming the video and the reason."""
    try:
      return action()
    except OSError as e:
      if self.file is not None:
        with contextlib.suppress(OSError):
          self.file.close()
      self.discard()
      raise UserError(f'Cannot write the video {self.path} ({e.strerror}): choose another '
                      'folder or name, with free space') from e


def open_writer(path: Path, fps: float, size: tuple[int, int]) -> _StagedVideo:
  """A staged video writer for ``path``: .mp4 (mp4v) or .y4m (uncompressed)."""
  writers = {'.mp4': VideoFile, '.y4m': Y4MFile}
  if path.suffix.lower() not in writers:
    raise UserError(f'Cannot write the video {path}: name it .mp4 (mp4v) or .y4m (YUV4MPEG2)')
  return writers[path.suffix.lower()](path, fps, size)


def _frames_in(path: Path) -> int:
  """How many frames a video file says it holds (0 if it does not open)."""
  capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
  try:
    return int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
  finally:
    capture.release()


def _why_not_written(folder: Path, frame_bytes: int) -> str:
  """The likely reason an encoder failed, for its message."""
  with contextlib.suppress(OSError):
    if shutil.disk_usage(folder).free <= frame_bytes:
      return 'no space left on the device: free some or write elsewhere'
  return 'check the free space and permissions of the folder'


@dataclasses.dataclass
class StreamReport:
  """What a stream run did and what each stage cost.

  The rates and times leave the first frame out: it pays for compilation and warm-up, as the
  benchmark's warm-up steps do (``bench infer`` times the model stage's work after them).
  """
  frames: int = 0  # Written.
  skipped: int = 0  # Read but not segmented (live sources only).
  seconds: float = 0.0  # From the start to the last frame written.
  written_at: list = dataclasses.field(default_factory=list)
  decode_s: list = dataclasses.field(default_factory=list)
  model_s: list = dataclasses.field(default_factory=list)
  encode_s: list = dataclasses.field(default_factory=list)
  latency_s: list = dataclasses.field(default_factory=list)
  ended_early: bool = False  # A file stopped decoding before its last frame.

  @property
  def frames_per_second(self) -> float:
    """Frames written per second after the first one."""
    if len(self.written_at) < 2:
      return math.nan
    return (len(self.written_at) - 1) / (self.written_at[-1] - self.written_at[0])

  def stage_ms(self) -> dict[str, float]:
    """Mean ms per frame of each stage (after the first frame) and the latency percentiles."""
    mean = lambda values: 1e3 * float(np.mean(values[1:])) if len(values) > 1 else math.nan  # noqa: E731
    latency = self.latency_s[1:]
    p50, p90 = np.percentile(latency, [50, 90]) * 1e3 if latency else (math.nan, math.nan)
    return {'decode': mean(self.decode_s), 'model': mean(self.model_s),
            'encode': mean(self.encode_s), 'latency_p50': float(p50), 'latency_p90': float(p90)}

  def lines(self, source: FrameSource) -> list[str]:
    ms = self.stage_ms()
    lines = [f'{source.description}: {self.frames} frame(s) in {self.seconds:.1f} s, '
             f'{self.frames_per_second:.2f} frames/s end to end after the first'
             + (f', {self.skipped} skipped to keep up' if source.live else ''),
             f"  per frame: decode {ms['decode']:.1f} ms, model {ms['model']:.1f} ms, encode "
             f"{ms['encode']:.1f} ms; latency from read to written p50 {ms['latency_p50']:.0f} "
             f"ms, p90 {ms['latency_p90']:.0f} ms"]
    if self.ended_early:
      lines.append(f'  {source.description} stopped after {self.frames + self.skipped} of '
                   f'{source.frame_count} frames (damaged or cut short); what was read is written')
    elif source.live:
      lines.append(f'  the stream ended after {self.frames + self.skipped} frames')
    return lines


class _Stage(threading.Thread):
  """A pipeline thread that keeps its exception for the caller."""

  def __init__(self, target: Callable[[], None], name: str):
    super().__init__(target=self._run, name=name, daemon=True)
    self.body, self.error = target, None

  def _run(self) -> None:
    try:
      self.body()
    except BaseException as error:  # Re-raised in the calling thread.
      self.error = error


def segment_stream(source: FrameSource, predict: Callable[[np.ndarray], np.ndarray],
                   write: Callable[[int, np.ndarray, np.ndarray], None], *,
                   max_latency: float | None = None,
                   on_frame: Callable[[StreamReport], None] | None = None) -> StreamReport:
  """Runs ``source`` through ``predict`` (uint8 RGB frame -> uint8 class ids) into ``write``.

  Args:
    source: the frames.
    predict: the model; runs in the calling thread.
    write: ``write(index, frame, labels)``, in frame order, in the writer thread.
    max_latency: live sources: skip frames that waited longer than this (seconds) for the model.
    on_frame: called (in the writer thread) after each written frame, e.g. for a progress bar.

  Returns:
    The StreamReport. Ctrl-C stops reading and finishes what was read.

  Raises:
    What a stage raised. A writer that fails stops the run at once: reading and the model stop
    within the frames already queued.
  """
  report = StreamReport()
  to_model, to_writer = queue.Queue(_QUEUE_FRAMES), queue.Queue(_QUEUE_FRAMES)
  stop = threading.Event()
  running = lambda: not stop.is_set()  # noqa: E731
  lock = threading.Lock()
  drop = source.live and max_latency is not None

  def skip():
    with lock:
      report.skipped += 1

  def read():
    index = 0
    while running():
      start = time.perf_counter()
      frame = source.read()
      if frame is None:
        break
      report.decode_s.append(time.perf_counter() - start)
      item = (index, start, frame)
      if drop:
        _put_replacing_oldest(to_model, item, skip)
      else:
        _put(to_model, item, running)
      index += 1
    _put(to_model, _END, running)

  def encode():
    while (item := to_writer.get()) is not _END:
      index, read_at, frame, labels = item
      start = time.perf_counter()
      write(index, frame, labels)
      now = time.perf_counter()
      report.encode_s.append(now - start)
      report.latency_s.append(now - read_at)
      report.written_at.append(now)
      report.frames += 1
      if on_frame is not None:
        on_frame(report)

  reader, writer = _Stage(read, 'decode'), _Stage(encode, 'encode')
  started = time.perf_counter()
  reader.start()
  writer.start()
  try:
    while writer.is_alive() and (item := _get(to_model, reader)) is not _END:
      index, read_at, frame = item
      if drop and time.perf_counter() - read_at > max_latency:
        skip()
        continue
      start = time.perf_counter()
      labels = predict(frame)
      report.model_s.append(time.perf_counter() - start)
      if not _put(to_writer, (index, read_at, frame, labels), writer.is_alive):
        break  # The writer died: its error is raised below.
  except KeyboardInterrupt:
    pass  # Finish what was read.
  finally:
    stop.set()
    _put(to_writer, _END, writer.is_alive)
    writer.join()
    reader.join(timeout=_READER_GRACE_S)
    report.seconds = (report.written_at[-1] if report.written_at else time.perf_counter()) - started
  for stage in (writer, reader):
    if stage.error is not None:
      raise stage.error
  read_total = report.frames + report.skipped
  report.ended_early = source.frame_count is not None and read_total < source.frame_count
  return report


def _put(target: queue.Queue, item, waiting: Callable[[], bool]) -> bool:
  """Puts ``item``, waiting for room as long as ``waiting()`` says the other side reads;
  whether it was put."""
  while waiting():
    try:
      target.put(item, timeout=0.1)
      return True
    except queue.Full:
      pass
  return False


def _put_replacing_oldest(target: queue.Queue, item, on_dropped: Callable[[], None]) -> None:
  """Puts ``item`` without waiting: when the queue is full its oldest item is dropped."""
  while True:
    try:
      target.put_nowait(item)
      return
    except queue.Full:
      try:
        target.get_nowait()
        on_dropped()
      except queue.Empty:
        pass


def _get(source: queue.Queue, producer: _Stage):
  """The next item; the end once the producer died and nothing is left."""
  while True:
    try:
      return source.get(timeout=0.1)
    except queue.Empty:
      if not producer.is_alive() and source.empty():
        return _END
