"""What a training run reports: ``metrics.jsonl``, TensorBoard, and lines above the progress bar.

clu's metric writers would be the obvious library, but importing ``clu.metric_writers`` imports
TensorFlow (its default summary writer), which training does not otherwise need; tensorboardX
writes the event files, and the JSON-lines file is a few lines of its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import tensorboardX
from tqdm import tqdm

METRICS_FILE = 'metrics.jsonl'


def log(message: str) -> None:
  """Prints on process 0, above the progress bar."""
  if jax.process_index() == 0:
    tqdm.write(message)


class MetricsLog:
  """``metrics.jsonl`` (one JSON object per logged step) + TensorBoard, by process 0 only."""

  def __init__(self, workdir: Path, resume_step: int):
    self.enabled = jax.process_index() == 0
    self.path = workdir / METRICS_FILE
    self.tensorboard_dir = workdir / 'tensorboard'
    self.tensorboard = None  # Opened at the first write: a run that fails early leaves no file.
    if self.enabled:
      self._drop_rows_after(resume_step)

  def _drop_rows_after(self, step: int) -> None:
    """A resumed run recomputes the steps after its checkpoint: forget their old rows."""
    if not self.path.exists():
      return
    rows = [line for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)['step'] <= step]
    self.path.write_text(''.join(f'{row}\n' for row in rows))

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    finite = {k: v if not isinstance(v, float) or math.isfinite(v) else None
              for k, v in values.items()}  # JSON has no NaN: a window of skipped steps has none.
    with self.path.open('a') as f:
      f.write(json.dumps({'step': step, **finite}) + '\n')
    if self.tensorboard is None:
      self.tensorboard = tensorboardX.SummaryWriter(str(self.tensorboard_dir))
    for name, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()
