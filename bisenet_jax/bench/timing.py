"""Timing helpers: compile time apart, then median and p90 of blocked steps after warm-up."""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np


def time_compile(jitted, *args):
  """``(compiled, seconds)`` of lowering + compiling ``jitted`` for ``args``."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_steps(step: Callable[[], object], warmup: int, steps: int,
               wait: Callable[[object], object] = jax.block_until_ready) -> np.ndarray:
  """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` calls.

  Each call counts until ``wait(result)`` returns: JAX's ``block_until_ready`` by default; the
  PyTorch side passes its device synchronisation.
  """
  for _ in range(warmup):
    wait(step())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    wait(step())
    times.append(time.perf_counter() - start)
  return np.asarray(times)


def summarize(times: np.ndarray, images_per_step: int) -> dict:
  median = float(np.median(times))
  return {'step_ms_median': 1e3 * median, 'step_ms_p90': 1e3 * float(np.percentile(times, 90)),
          'img_per_s': images_per_step / median}
