"""StableHLO through ``jax.export``: a serialised ``Exported`` with a symbolic batch dimension.

Reload it with JAX alone: ``jax.export.deserialize(data).call(images)``.
"""

from __future__ import annotations

import jax

from bisenet_jax.models import kernels


def export_stablehlo(fn, spec) -> bytes:
  """``fn`` traced with standard convolutions (``kernels.portable``), serialised."""
  with kernels.portable():
    return bytes(jax.export.export(jax.jit(fn))(spec).serialize())


def load(data: bytes):
  return jax.export.deserialize(bytearray(data))
