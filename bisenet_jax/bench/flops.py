"""Model FLOPs two ways: XLA's cost analysis of the compiled program, and an analytic conv count.

The analytic count is docs/reference.md §7.3's method: for every convolution, 2 x output elements x
(Cin / groups) x kh x kw, nothing else (256.7 GFLOPs for R18 at 1024x2048 inference), counted
over the model's ``nn.Conv`` calls. It is the count MFU uses. XLA's cost analysis agrees with it
within a few percent on CPU; on GPU, where convolutions are cuDNN library calls, XLA does not
count them and reports only the rest of the program (about 1% of the work).
"""

from __future__ import annotations

import math

import jax
from flax import linen as nn

PEAKS_SOURCE = 'vendor datasheets, dense (no sparsity)'
# Per-device peak TFLOP/s by device_kind substring, for MFU. Only datasheet numbers: anything
# not listed (CPUs included) reports MFU 'n/a' unless --peak-tflops is given. A float32 model's
# peak is that of the passes its precision runs (``float32_pass``): full FP32 at 'highest',
# TF32 tensor cores at 'tensorfloat32' (and at 'default' on NVIDIA GPUs since Ampere, as cuDNN
# in PyTorch), one bfloat16 pass at 'bfloat16' (and at 'default' on TPUs).
PEAK_TFLOPS = {
    # NVIDIA H100 SXM5 datasheet: BF16 989.4, TF32 494.7, FP32 66.9. H200 has the same compute.
    'H100': {'bfloat16': 989.4, 'float16': 989.4, 'tensorfloat32': 494.7, 'float32': 66.9},
    'H200': {'bfloat16': 989.4, 'float16': 989.4, 'tensorfloat32': 494.7, 'float32': 66.9},
    # NVIDIA A100 (SXM) datasheet: BF16 and FP16 312, TF32 156, FP32 19.5.
    'A100': {'bfloat16': 312.0, 'float16': 312.0, 'tensorfloat32': 156.0, 'float32': 19.5},
    # NVIDIA V100 (SXM2) and T4 datasheets: FP16 tensor cores 125 and 65, FP32 15.7 and 8.1
    # (no TF32, no fast BF16).
    'V100': {'float16': 125.0, 'float32': 15.7},
    'T4': {'float16': 65.0, 'float32': 8.1},
    # Google Cloud TPU docs, per chip, BF16.
    'TPU v4': {'bfloat16': 275.0},
    'TPU v5 lite': {'bfloat16': 197.0},
    'TPU v5e': {'bfloat16': 197.0},
    'TPU v5p': {'bfloat16': 459.0},
}


def float32_pass(device_kind: str, precision: str, peaks: dict) -> str:
  """The arithmetic a float32 convolution runs at ``precision`` on this device: 'float32',
  'tensorfloat32' or 'bfloat16' (a device without TF32, e.g. V100, runs FP32)."""
  if precision == 'default':
    precision = 'bfloat16' if 'tpu' in device_kind.lower() else 'tensorfloat32'
  arithmetic = 'float32' if precision == 'highest' else precision
  return arithmetic if arithmetic in peaks else 'float32'


def peak_tflops(device_kind: str, dtype: str, precision: str = 'highest',
                override: float | None = None) -> float | None:
  """The datasheet peak of one device for ``dtype`` at ``precision`` (of float32 convolutions),
  or None when unknown (never a guess)."""
  if override:
    return override
  for name, peaks in PEAK_TFLOPS.items():
    if name.lower() in device_kind.lower():
      if dtype == 'float32':
        dtype = float32_pass(device_kind, precision, peaks)
      return peaks.get(dtype)
  return None


def analytic_conv_flops(fn, *args) -> float:
  """2 x MACs of every ``nn.Conv`` that ``fn(*args)`` calls (args may be ShapeDtypeStructs).

  Counted per module call (output elements x kh x kw x Cin per group), so it does not depend on
  how a convolution is lowered: the 1x1 ones run as matrix products (models/layers.py).
  """
  total = 0.0

  def count(next_fun, call_args, call_kwargs, context):
    nonlocal total
    out = next_fun(*call_args, **call_kwargs)
    if isinstance(context.module, nn.Conv) and context.method_name == '__call__':
      kernel = context.module.get_variable('params', 'kernel')
      total += 2.0 * math.prod(out.shape) * math.prod(kernel.shape[:-1])
    return out

  with nn.intercept_methods(count):
    jax.eval_shape(fn, *args)
  return total


def xla_flops(compiled) -> float | None:
  """FLOPs of one execution of a compiled (per-device) program, from XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0] if analysis else None
  flops = analysis.get('flops') if analysis else None
  return float(flops) if flops and flops > 0 else None
