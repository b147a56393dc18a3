"""The same inference points on ONNX Runtime (CPU), for ``--compare-onnx``.

The model (the JAX side's random initialisation) is exported as ``python -m bisenet_jax.export
--outputs labels --with-preprocessing --layout nhwc`` would, so each step does the JAX side's
work on the same uint8 images: normalise, forward, bilinear upsample to full size, argmax.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from bisenet_jax import models
from bisenet_jax.bench import timing
from bisenet_jax.export import INPUT_NAME, Interface, graph, onnx_file, onnx_runtime


def measure(point, images: np.ndarray, warmup: int, steps: int,
            threads: int | None = None) -> dict:
  """Times one 'infer' point; ``images`` uint8 [N, H, W, 3] RGB. ``compile_s``: export + load."""
  start = time.perf_counter()
  model = models.build_model(point.model_name)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  interface = Interface(point.height, point.width, model.num_classes, layout='nhwc',
                        outputs='labels', preprocessing=True)
  data = onnx_file.export_onnx(graph.interface_fn(model, variables, interface),
                               graph.input_spec(interface), interface, None)
  session = onnx_runtime.session(data, threads)
  prepare_s = time.perf_counter() - start
  step = lambda: session.run(None, {INPUT_NAME: images})  # noqa: E731
  times = timing.time_steps(step, warmup, steps, wait=lambda _: None)
  median = float(np.median(times))
  return {'compile_s': prepare_s, 'step_ms_median': 1e3 * median,
          'step_ms_p90': 1e3 * float(np.percentile(times, 90)),
          'img_per_s': point.global_batch / median, 'device_kind': 'cpu',
          'threads': session.get_session_options().intra_op_num_threads or None}
