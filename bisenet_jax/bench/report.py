"""The console table, the JSON-lines file and the scaling plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = (  # (header, key, format)
    ('impl', 'impl', '{}'), ('mode', 'mode', '{}'), ('arch', 'arch', '{}'),
    ('dtype', 'dtype', '{}'), ('precision', 'precision', '{}'), ('dev', 'devices', '{}'), ('b/dev', 'batch_per_device', '{}'),
    ('HxW', 'resolution', '{}'), ('compile s', 'compile_s', '{:.1f}'),
    ('ms med', 'step_ms_median', '{:.0f}'), ('ms p90', 'step_ms_p90', '{:.0f}'),
    ('img/s', 'img_per_s', '{:.2f}'), ('img/s/dev', 'img_per_s_per_device', '{:.2f}'),
    ('scal eff', 'scaling_efficiency', '{:.0%}'), ('GFLOP/img xla', 'gflops_per_image_xla',
                                                   '{:.1f}'),
    ('GFLOP/img conv', 'gflops_per_image_analytic', '{:.1f}'), ('MFU', 'mfu', '{:.1%}'),
    ('mem GiB', 'program_memory_gib', '{:.2f}'), ('data img/s', 'data_img_per_s', '{:.1f}'),
    ('data img/s/core', 'data_img_per_s_per_core', '{:.1f}'),
    ('cores/dev', 'data_cores_per_device', '{:.1f}'), ('data wait', 'data_wait_fraction', '{:.0%}'),
    ('vs jax', 'jax_speedup', '{:.2f}x'),
)


def _cell(row: dict, key: str, fmt: str) -> str:
  value = row.get(key)
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a' if key != 'jax_speedup' else ''
  return fmt.format(value)


def table(rows: list[dict], columns=COLUMNS) -> str:
  """An aligned text table of ``rows``, one line per row, under a header line; ``columns``:
  (header, key, format) triples (default: the infer and train columns)."""
  cells = [[header for header, _, _ in columns]]
  for row in rows:
    if 'error' in row:
      cells.append([row['impl'], row['mode'], row['arch'], row['dtype'], '1', '', '',
                    f"n/a ({row['error']})"] + [''] * (len(columns) - 8))
    else:
      cells.append([_cell(row, key, fmt) for _, key, fmt in columns])
  widths = [max(len(c[i]) for c in cells if i < len(c)) for i in range(len(columns))]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def append_jsonl(rows: list[dict], path: str | Path) -> None:
  with Path(path).open('a') as f:
    for row in rows:
      f.write(json.dumps(row) + '\n')


def plot(rows: list[dict], path: str | Path) -> None:
  """img/s and weak-scaling efficiency vs device count, one line per JAX configuration."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, (ax_rate, ax_eff) = plt.subplots(1, 2, figsize=(11, 4))
  series: dict[str, list[dict]] = {}
  for row in rows:
    if row.get('impl') == 'jax' and 'img_per_s' in row:
      label = (f"{row['mode']} {row['arch']} {row['dtype']} {row['resolution']} "
               f"b{row['batch_per_device']}")
      series.setdefault(label, []).append(row)
  for label, points in series.items():
    points.sort(key=lambda r: r['devices'])
    devices = [r['devices'] for r in points]
    ax_rate.plot(devices, [r['img_per_s'] for r in points], 'o-', label=label)
    ax_eff.plot(devices, [r['scaling_efficiency'] or math.nan for r in points], 'o-', label=label)
  for ax, title in ((ax_rate, 'throughput (img/s)'), (ax_eff, 'weak-scaling efficiency')):
    ax.set_xscale('log', base=2)
    ax.set_xlabel('devices')
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
  ax_eff.set_ylim(0, 1.1)
  ax_rate.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
