"""Segments images, videos, cameras and streams, and writes masks in the classes' colours.

  python -m bisenet_jax.predict --checkpoint fcn_bisenetv1_resnet18os32_cityscapes.pth \
      street.jpg photos/ clip.mp4 --output masks/ --overlay
  python -m bisenet_jax.predict --checkpoint r18_int8.onnx --camera 0 --output live/ \
      --max-latency-ms 200

INPUTs are image files, folders (searched recursively for *.jpg, *.jpeg, *.png), video files
(.mp4, .avi, .mkv, .mov, ...) and stream URLs (rtsp://, http://, ...); ``--camera INDEX`` adds a
camera. For each image ``<stem>.<ext>`` the output folder receives ``<stem>_mask.png`` (class
indices in a palette PNG: viewers show each class's colour, readers get the indices) and, with
``--overlay``, ``<stem>_overlay.png`` (the image and the mask blended 50/50); images found in a
folder keep their sub-folder path below it. A video ``<stem>.mp4`` (or camera, or stream) gives
``<stem>_mask.mp4`` (the masks' colours, same size and frame rate) and, with ``--overlay``,
``<stem>_overlay.mp4``; ``--frame-masks`` also writes every frame's mask as
``<stem>/<frame index, 6 digits>_mask.png``, the PNG an image gives. Videos run as a pipeline
(decoding, the model and encoding at once; ``bisenet_jax.video``), and a report gives frames/s
end to end and each stage's ms per frame. ``legend.png`` names the colours. The classes and
their colours are the checkpoint's (a model trained here records them; official checkpoints are
Cityscapes'), or ``--dataset`` / ``--classes``'.

Each image goes through the protocol the model was evaluated with: resized to fit the
dataset's test Resize target keeping its aspect ratio (the checkpoint's or file's record, e.g.
1024x2048 for Cityscapes, 512x1024 for a folder dataset; ``--resize-to HEIGHTxWIDTH`` to change
it), normalised as in evaluation, and its logits upsampled back to the image's size, where the
mask is written. ``--scales`` runs it at other sizes too, ``--input-size HEIGHTxWIDTH`` at one
fixed size (what a file exported with it does). The model runs through
``bisenet_jax.Segmenter``: the shared, jitted inference on one device with the same flags as
``bisenet_jax.evaluate``, compiled once per distinct image size.

``--checkpoint model.onnx`` runs a file from ``python -m bisenet_jax.export`` on ONNX Runtime
instead, without JAX: any image size, the same test resize, classes and colours from the file's
metadata (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from bisenet_jax import cli, video
from bisenet_jax.data import masks
from bisenet_jax.data.images import IMAGE_SUFFIXES, read_image
from bisenet_jax.errors import UserError

LEGEND_NAME = 'legend.png'


@dataclasses.dataclass(frozen=True)
class Input:
  """One thing to segment: ``kind`` 'image', 'video', 'url' or 'camera'; ``stem`` names its
  outputs below the output folder."""
  kind: str
  source: str | int
  stem: Path


def find_inputs(inputs: list[str], cameras: list[int]) -> list[Input]:
  """What to segment: image files, folders' images, videos, URLs and cameras, in that order of
  the command line (cameras last).

  A file is an image unless its ending is a video's (decoding decides); a folder contributes
  its images below it, in sorted order, keeping their sub-folders so equal names in different
  places do not collide.
  """
  found = []
  for text in inputs:
    path = Path(text)
    if video.is_url(text):
      found.append(Input('url', text, Path(video.url_stem(text))))
    elif path.is_file():
      found.append(Input('video' if video.is_video(path) else 'image', str(path), Path(path.stem)))
    elif path.is_dir():
      images = sorted(p for p in path.rglob('*')
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
      if not images:
        raise UserError(f'No {", ".join("*" + suffix for suffix in IMAGE_SUFFIXES)} files under '
                        f'{path}')
      found.extend(Input('image', str(p), p.relative_to(path).with_suffix('')) for p in images)
    else:
      raise UserError(f'Input {path} does not exist')
  found.extend(Input('camera', index, Path(f'camera{index}')) for index in cameras)
  if not found:
    raise UserError('nothing to segment: give image, folder, video or URL INPUTs, or --camera')
  _check_unique(found)
  return found


def _check_unique(found: list[Input]) -> None:
  owners = {}
  for item in found:
    if item.stem in owners and owners[item.stem] != item.source:
      raise UserError(f'{owners[item.stem]} and {item.source} would both be written as '
                      f'{item.stem}_mask: predict them into different --output folders')
    owners[item.stem] = item.source


def draw_legend(classes, swatch: int = 24) -> np.ndarray:
  """uint8 RGB image: one row per class, a colour swatch followed by the index and name."""
  width = swatch + 60 + 9 * max(len(name) for name in classes.names)
  legend = np.full((swatch * classes.num_classes, width, 3), 255, np.uint8)
  for index, (name, colour) in enumerate(zip(classes.names, classes.palette)):
    top = index * swatch
    legend[top + 2:top + swatch - 2, 4:4 + swatch] = colour
    cv2.putText(legend, f'{index:2d} {name}', (swatch + 12, top + swatch - 7),
                cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
  return legend


def write_rgb(path: Path, image: np.ndarray) -> None:
  _written(path, lambda: cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)))


def write_mask(path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
  """The mask of an image or a video frame: a palette PNG of class indices."""
  _written(path, lambda: masks.write_index_png(path, labels, palette) or True)


def _written(path: Path, write: Callable[[], bool]) -> None:
  """Runs ``write``; a file it could not write (whole) is removed and named in a UserError."""
  reason = ''
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    written = write()
  except OSError as e:
    written, reason = False, f' ({e.strerror})' if e.strerror else ''
  if not written:
    with contextlib.suppress(OSError):  # A partly written file; a folder of that name stays.
      path.unlink(missing_ok=True)
    raise UserError(f'Cannot write {path}{reason}: check that --output is a writable folder '
                    'with free space')


def predict_image(item: Input, predict, palette, output: Path, overlay: bool) -> None:
  image = read_image(item.source, 'replace the file or leave it out')
  labels = predict(image)
  write_mask(output / f'{item.stem}_mask.png', labels, palette)
  if overlay:
    overlay_image = masks.blend(image, masks.colorize(labels, palette))
    write_rgb(output / f'{item.stem}_overlay.png', overlay_image)


def open_source(item: Input) -> video.FrameSource:
  if item.kind == 'video':
    return video.open_video(Path(item.source))
  if item.kind == 'url':
    return video.open_url(item.source)
  return video.open_camera(item.source)


class StreamOutputs:
  """The mask (and overlay) videos and frame PNGs of one stream, opened at its first frame."""

  def __init__(self, output: Path, item: Input, fps: float, palette, overlay: bool,
               frame_masks: bool):
    self.output, self.stem, self.fps, self.palette = output, item.stem, fps, palette
    self.overlay, self.frame_masks = overlay, frame_masks
    self.videos: dict[str, video.VideoFile] = {}

  def write(self, index: int, frame: np.ndarray, labels: np.ndarray) -> None:
    if not self.videos:
      self.output.mkdir(parents=True, exist_ok=True)
      kinds = ('mask', 'overlay') if self.overlay else ('mask',)
      for kind in kinds:
        path = self.output / f'{self.stem}_{kind}.mp4'
        path.parent.mkdir(parents=True, exist_ok=True)
        self.videos[kind] = video.VideoFile(path, self.fps, labels.shape)
    colours = masks.colorize(labels, self.palette)
    self.videos['mask'].write(colours)
    if self.overlay:
      self.videos['overlay'].write(masks.blend(frame, colours))
    if self.frame_masks:
      write_mask(self.output / self.stem / f'{index:06d}_mask.png', labels, self.palette)

  def close(self, keep: bool) -> list[Path]:
    """Finishes every video, then installs them if ``keep``; returns the files kept.

    Every encoder is finished and every temporary file removed whatever fails (a video that
    cannot be finished keeps none of them).
    """
    files = list(self.videos.values())
    with contextlib.ExitStack() as cleanup:
      for file in files:
        cleanup.callback(file.discard)
      with contextlib.ExitStack() as finishing:  # Runs every callback, even after one raised.
        for file in files:
          finishing.callback(file.finish)
      if keep:
        for file in files:
          file.install()
    return [file.path for file in files if keep and file.frames]


@dataclasses.dataclass(frozen=True)
class StreamOptions:
  """What is written for a video, camera or stream, and how late a live frame may be.

  Attributes:
    overlay: also write the video blended with its masks.
    frame_masks: also write every frame's mask as a PNG.
    max_latency_s: live sources: skip frames that waited longer than this for the model.
  """
  overlay: bool = False
  frame_masks: bool = False
  max_latency_s: float | None = None


def predict_stream(item: Input, predict, palette, output: Path,
                   options: StreamOptions) -> list[str]:
  """Segments one video, camera or stream; returns the report's lines."""
  source = open_source(item)
  outputs = StreamOutputs(output, item, source.fps, palette, options.overlay,
                          options.frame_masks)
  bar = tqdm(total=source.frame_count, unit='frame', desc=str(item.stem), leave=False,
             disable=not sys.stderr.isatty())

  def on_frame(report):
    bar.update()
    bar.set_postfix_str(f'{report.frames / max(bar.format_dict["elapsed"], 1e-9):.1f} frames/s')

  kept = False
  try:
    report = video.segment_stream(source, predict, outputs.write, on_frame=on_frame,
                                  max_latency=options.max_latency_s)
    if not report.frames and not source.live:
      raise UserError(f'OpenCV opened {source.description} but decoded no frame of it: the file '
                      'is damaged or its codec is missing from OpenCV\'s FFmpeg')
    kept = True
  finally:
    bar.close()
    try:
      source.close()
    finally:
      written = outputs.close(kept)
  lines = report.lines(source)
  if written:
    lines.append(f'  wrote {", ".join(str(path) for path in written)}')
  return lines


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m bisenet_jax.predict',
                                   description=__doc__.splitlines()[0],
                                   epilog='Sizes are HEIGHTxWIDTH.')
  parser.add_argument('inputs', nargs='*', metavar='INPUT',
                      help='image files, folders (searched recursively for .jpg/.jpeg/.png), '
                      'video files, or stream URLs (rtsp://, http://, ...)')
  parser.add_argument('--camera', type=int, action='append', default=[], metavar='INDEX',
                      help='also segment camera INDEX (OpenCV numbering, 0 = the first)')
  parser.add_argument('--checkpoint', required=True,
                      help='official .pth, a folder from convert/ssseg_to_flax.py, a training '
                      'workdir (its latest checkpoint), or an .onnx from bisenet_jax.export')
  parser.add_argument('--output', required=True, help='folder for the masks (created if needed)')
  parser.add_argument('--overlay', action='store_true',
                      help='also write the image (video) blended with its mask')
  parser.add_argument('--frame-masks', action='store_true',
                      help="videos: also write every frame's mask as <stem>/<index>_mask.png")
  parser.add_argument('--max-latency-ms', type=float, metavar='MS',
                      help='cameras and streams: skip frames that waited longer than this for '
                      'the model, so the output keeps up (skipped frames are counted)')
  cli.add_ema_argument(parser)
  cli.add_dataset_arguments(parser, layout=False)
  cli.add_inference_arguments(parser)
  return parser.parse_args(argv)


@cli.user_errors_exit
def main(argv=None) -> None:
  args = parse_args(argv)
  spec = cli.inference_spec(args)
  items = find_inputs(args.inputs, args.camera)
  if args.max_latency_ms is not None and (args.max_latency_ms <= 0 or not any(
      item.kind in ('url', 'camera') for item in items)):
    raise UserError('--max-latency-ms takes a positive number and applies to cameras and stream '
                    "URLs only: a file's frames are never skipped")
  segmenter = cli.load_segmenter(args, spec, root=None)
  predict, palette = segmenter, segmenter.palette
  output = Path(args.output)
  write_rgb(output / LEGEND_NAME, draw_legend(segmenter.classes))
  images = [item for item in items if item.kind == 'image']
  for item in tqdm(images, unit='image', desc='predict', leave=False,
                   disable=not sys.stderr.isatty()):
    predict_image(item, predict, palette, output, args.overlay)
  if images:
    print(f'wrote {len(images)} mask(s){" and overlays" if args.overlay else ""} and '
          f'{LEGEND_NAME} to {output}')
  options = StreamOptions(args.overlay, args.frame_masks,
                          None if args.max_latency_ms is None else args.max_latency_ms / 1e3)
  for item in items:
    if item.kind != 'image':
      print('\n'.join(predict_stream(item, predict, palette, output, options)), flush=True)


if __name__ == '__main__':
  main()
