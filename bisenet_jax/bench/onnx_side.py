"""The same inference points on ONNX Runtime (CPU), for ``--compare-onnx``.

The model (the JAX side's random initialisation) is exported as ``python -m bisenet_jax.export
--outputs labels --with-preprocessing --layout nhwc`` would, so each step does the JAX side's
work on the same uint8 images: normalise, forward, bilinear upsample to full size, argmax.
"""

from __future__ import annotations

import time

import numpy as np

from bisenet_jax import models
from bisenet_jax.bench import timing
from bisenet_jax.export import INPUT_NAME, Interface, graph, onnx_file, onnx_runtime


def measure(point, images: np.ndarray, warmup: int, steps: int,
            threads: int | None = None) -> dict:
  """Times one 'infer' point; ``images`` uint8 [N, H, W, 3] RGB. ``compile_s``: export + load."""
  start = time.perf_counter()
  model = point.model.build()
  variables = models.init_variables(model)
  interface = Interface(*point.input_size, model.num_classes, layout='nhwc', outputs='labels',
                        preprocessing=True)
  data = onnx_file.export_onnx(graph.interface_fn(model, variables, interface),
                               graph.input_spec(interface), interface, None)
  session = onnx_runtime.session(data, threads)
  prepare_s = time.perf_counter() - start
  inputs = {INPUT_NAME: interface.prepare(images)}  # uint8 NHWC: the images as they are.
  step = lambda: session.run(None, inputs)  # noqa: E731
  times = timing.time_steps(step, warmup, steps, wait=lambda _: None)
  return {'compile_s': prepare_s, **timing.summarize(times, point.global_batch),
          'device_kind': 'cpu',
          'threads': session.get_session_options().intra_op_num_threads or None}
