"""Training batches for fixed (seed, step), recorded as SHA-256 digests.

`pipeline_batches.json` holds the digests written by the training pipeline as it was when it
still resized whole frames with OpenCV before cropping (`python tests/goldens/pipeline_batches.py
tests/goldens/pipeline_batches.json` at that version). tests/test_pipeline.py recomputes them
with today's pipeline: equal digests mean every batch (images, labels and content boxes) is the
same, bit for bit. The frames are drawn from NumPy seeds here, so nothing else is stored.
"""

import hashlib
import json
import sys

import numpy as np

from bisenet_jax.data import pipeline


def frames(count, height, width, seed):
  """Frames with blocky class layouts (one to five classes; some frames one class only, some
  with an ignored bottom part) and textured images, from a NumPy seed."""
  rng = np.random.default_rng(seed)
  samples = []
  for index in range(count):
    rows, cols = np.mgrid[0:height, 0:width]
    block_h = rng.integers(height // 8, height // 2 + 1)
    block_w = rng.integers(width // 8, width // 2 + 1)
    classes = int(rng.integers(1, 6)) if index % 4 else 1
    label = ((rows // block_h) * 7 + (cols // block_w) * 3 + rng.integers(19)) % 19
    label = (label % classes + rng.integers(19 - classes)).astype(np.uint8)
    if index % 3 == 0:
      label[rng.integers(height):, :] = 255
    image = (rng.integers(0, 64, (height, width, 3)) + rows[..., None] * 97 // height
             + cols[..., None] * 61 // width + label[..., None] * 5).astype(np.uint8)
    samples.append({'image': image, 'label': label})
  return samples


def digests(samples, steps, **settings):
  """The digest of each of the first `steps` batches of the training stream."""
  iterator = pipeline.make_train_iterator(samples, **settings)
  result = []
  for _ in range(steps):
    batch = next(iterator)
    result.append(hashlib.sha256(b''.join(np.ascontiguousarray(batch[key]).tobytes()
                                          for key in ('image', 'label', 'content'))).hexdigest())
  return result


def _case(frames_args, steps, batch, seed, crop_size, resize_to, scale_range=(0.5, 2.0)):
  return {'frames': frames_args, 'steps': steps,
          'settings': {'global_batch_size': batch, 'seed': seed, 'crop_size': crop_size,
                       'resize_to': resize_to, 'scale_range': scale_range}}


# Small frames (quick tier): two crop shapes, odd sizes, a scale range past 0.5-2.0. Then the two
# recipes' crops of Cityscapes-sized frames (slow tier): R18's 1024x1024, Fast-SCNN's 512x1024.
CASES = {
    'small': _case((12, 96, 192, 0), 24, 4, 3, (96, 96), (96, 192)),
    'small_wide': _case((12, 96, 192, 1), 24, 4, 5, (48, 96), (96, 192)),
    'odd': _case((9, 75, 131, 2), 16, 3, 7, (64, 80), (100, 200), (0.3, 2.5)),
    'r18': _case((4, 1024, 2048, 3), 2, 16, 0, (1024, 1024), (1024, 2048)),
    'fastscnn': _case((4, 1024, 2048, 4), 1, 32, 0, (512, 1024), (1024, 2048)),
}


if __name__ == '__main__':
  result = {}
  for name, case in CASES.items():
    result[name] = digests(frames(*case['frames']), case['steps'], **case['settings'])
    print(name, result[name][:2], file=sys.stderr)
  with open(sys.argv[1], 'w', encoding='utf-8') as file:
    json.dump(result, file, indent=1)
