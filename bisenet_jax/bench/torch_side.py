"""The same points for the PyTorch reference model, in the same process and on the same inputs.

Variants: 'eager' (fp32 NCHW), 'channels_last', 'bf16' (autocast; where the device supports it)
and 'compile' (``torch.compile``; reported 'n/a' with the reason when it fails). Inference is
forward + bilinear upsample to the input size + argmax, as the JAX side; training is forward in
train mode, the three cross-entropies on upsampled logits, backward and an SGD step.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from bisenet_jax.bench import timing
from bisenet_jax.data.normalization import normalize

VARIANTS = ('eager', 'channels_last', 'bf16', 'compile')
VARIANT_DTYPES = {'eager': 'float32', 'channels_last': 'float32', 'bf16': 'bfloat16',
                  'compile': 'float32'}


def measure(point, variant: str, images: np.ndarray, labels: np.ndarray, warmup: int,
            steps: int, threads: int | None = None) -> dict:
  """Times ``point`` ('infer' or 'train', one device) for one PyTorch ``variant``.

  ``images`` are uint8 [N, H, W, 3] RGB, ``labels`` uint8 [N, H, W].
  """
  import torch
  import torch.nn.functional as F

  from bisenet_jax.bench.torch_models import reference_builder

  if threads:
    torch.set_num_threads(threads)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  if device == 'cuda':
    torch.backends.cudnn.benchmark = True  # Fixed shapes: let cuDNN pick its fastest kernels.
  model = reference_builder(point.arch)().to(device)
  # Normalised on the host, outside the timed step (the JAX side does it inside, on the device).
  x = torch.from_numpy(normalize(images).transpose(0, 3, 1, 2).copy()).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)
  if variant in ('channels_last', 'compile'):
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  autocast = (torch.autocast(device, dtype=torch.bfloat16) if variant == 'bf16'
              else contextlib.nullcontext())
  net = model
  if variant == 'compile':
    net = torch.compile(model)
  size = x.shape[2:]
  upsample = lambda o: F.interpolate(o.float(), size=size, mode='bilinear', align_corners=False)

  if point.mode == 'infer':
    model.eval()

    def step():
      with torch.no_grad(), autocast:
        return upsample(net(x)).argmax(1)
  else:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=5e-4)

    def step():
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        outputs = net(x)
      loss = sum(_head_loss(table, upsample(o), y)
                 for (_, table), o in zip(point.model.network.heads, outputs, strict=True))
      loss.backward()
      optimizer.step()

  start = time.perf_counter()
  try:
    step()  # The first call compiles (torch.compile) or warms the allocator.
    sync()
  except Exception as e:  # An unsupported variant is a result to report, not a crash.
    return {'error': f'{type(e).__name__}: {str(e).splitlines()[0][:120]}'}
  first_s = time.perf_counter() - start
  if device == 'cuda':  # Steady state: not cuDNN's algorithm search in the first step.
    torch.cuda.reset_peak_memory_stats()
  times = timing.time_steps(step, max(0, warmup - 1), steps, wait=lambda _: sync())
  return {'compile_s': first_s if variant == 'compile' else None,
          **timing.summarize(times, point.global_batch), 'threads': torch.get_num_threads(),
          'device_kind': torch.cuda.get_device_name() if device == 'cuda' else device,
          'program_memory_gib': (torch.cuda.max_memory_allocated() / 2**30
                                 if device == 'cuda' else None)}


def _head_loss(table, logits, labels):
  """The network's reference loss for one head (its ``CrossEntropyLoss`` entries: softmax, or
  with ``use_sigmoid`` per-class binary; ``scale_factor``), ignored pixels 255."""
  import torch.nn.functional as F
  total = 0.0
  for loss in table:
    if loss.get('use_sigmoid'):
      valid = labels != 255
      target = F.one_hot(labels[valid], logits.shape[1]).to(logits.dtype)
      value = F.binary_cross_entropy_with_logits(logits.permute(0, 2, 3, 1)[valid], target)
    else:
      value = F.cross_entropy(logits, labels, ignore_index=255)
    total = total + value * loss.get('scale_factor', 1.0)
  return total
