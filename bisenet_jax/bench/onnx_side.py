"""The same inference points on ONNX Runtime (CPU), for ``--compare-onnx``.

The model (the JAX side's random initialisation) is exported as ``python -m bisenet_jax.export
--outputs labels --with-preprocessing --layout nhwc --dtype DTYPE`` would, so each step does the
JAX side's work on the same uint8 images: normalise, forward, bilinear upsample to full size,
argmax. int8 files are calibrated on street frames (timing does not depend on what they show).
"""

from __future__ import annotations

import time

import numpy as np

from bisenet_jax import models
from bisenet_jax.bench import timing
from bisenet_jax.export import INPUT_NAME, Interface, onnx_file, onnx_runtime


CALIBRATION_IMAGES = 8


def measure(point, images: np.ndarray, warmup: int, steps: int, threads: int | None = None,
            dtype: str = 'float32', calibration_source=None) -> dict:
  """Times one 'infer' point; ``images`` uint8 [N, H, W, 3] RGB. ``compile_s``: export + load.

  ``calibration_source``: random-access samples with 'image' (int8 only).
  """
  start = time.perf_counter()
  model = models.build(point.model)
  variables = models.init_variables(model)
  interface = Interface(*point.input_size, model.num_classes, layout='nhwc', outputs='labels',
                        preprocessing=True, dtype=dtype, any_input_size=True)
  calibration = None
  if dtype == 'int8':
    calibration = lambda: (interface.prepare(calibration_source[i]['image'][None])  # noqa: E731
                           for i in range(min(CALIBRATION_IMAGES, len(calibration_source))))
  proto = onnx_file.build(model, variables, interface, calibration)
  session = onnx_runtime.session(proto.SerializeToString(), threads)
  prepare_s = time.perf_counter() - start
  inputs = {INPUT_NAME: interface.prepare(images)}  # uint8 NHWC: the images as they are.
  step = lambda: session.run(None, inputs)  # noqa: E731
  times = timing.time_steps(step, warmup, steps, wait=lambda _: None)
  return {'compile_s': prepare_s, **timing.summarize(times, point.global_batch),
          'device_kind': 'cpu',
          'threads': session.get_session_options().intra_op_num_threads or None}
