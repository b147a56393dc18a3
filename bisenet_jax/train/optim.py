"""The reference optimizer: SGD with momentum and L2 weight decay, poly lr with linear warm-up.

sssegmentation trains with ``torch.optim.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)`` over one
parameter group and sets the lr before every step from the number of steps already taken
(docs/reference.md §4.2-4.3). optax passes exactly that count to a schedule, so a schedule here is a
plain function of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def poly_warmup_schedule(base_lr: float = 0.05, total_steps: int = 159_960, min_lr: float = 1e-4,
                         power: float = 0.9, warmup_steps: int = 1000, warmup_ratio: float = 0.1,
                         dtype=jnp.float32) -> optax.Schedule:
  """The reference lr policy: poly decay whose value a linear warm-up *multiplies*.

  For step ``i`` (optimizer steps already taken)::

    poly(i) = (base_lr - min_lr) * (1 - i / total_steps) ** power + min_lr
    lr(i) = poly(i) * (warmup_ratio + (1 - warmup_ratio) * i / warmup_steps)  if i <= warmup_steps
    lr(i) = poly(i)                                                            otherwise

  The warm-up is a factor on the poly value, as in sssegmentation's PolyScheduler, so it cannot
  be built with ``optax.join_schedules`` or ``optax.warmup_*`` schedules: those switch from an
  additive warm-up ramp to the decay at a boundary, which gives a different lr during warm-up.

  Both parts are written out, in ``dtype``, the parameters' precision (optax's schedules compute
  in float32: a float64 run got 0.005000001285 at step 0 where the reference has
  0.004999999999999999):

  * In float64, with the reference's own arithmetic (``1 - i / total_steps``, then its warm-up
    ``(1 - (1 - i / warmup_steps) * (1 - warmup_ratio)) * poly``), so the lr is the reference's
    Python float to the last bits or so (XLA's ``pow`` may differ from C's by an ulp).
  * In float32, ``1 - i / total_steps`` would cancel catastrophically in the last steps (as in
    ``optax.polynomial_schedule``: relative lr error up to 4e-5, 1.0104e-4 instead of the
    reference's 1.0103e-4 at the final step); ``(total_steps - i) / total_steps`` has an exact
    integer numerator and leaves an error < 2e-7.

  XLA compiles a division by a constant into a multiplication by its rounded reciprocal (1e-12
  off ``1 - i / total_steps`` at the last step), so the two divisors pass through
  ``optimization_barrier``: a true division, as in Python.

  The returned function is jit-safe: ``i`` may be a traced integer scalar. Steps past
  ``total_steps`` get ``min_lr``. ``warmup_steps=0`` means no warm-up (Fast-SCNN's recipe).
  """
  exact_reference = jnp.dtype(dtype) == jnp.float64

  def schedule(step):
    step = jnp.clip(jnp.asarray(step, dtype), 0, total_steps)
    total, warmup = jax.lax.optimization_barrier(
        (jnp.asarray(total_steps, dtype), jnp.asarray(max(warmup_steps, 1), dtype)))
    left = 1 - step / total if exact_reference else (total - step) / total
    poly = left ** power * (base_lr - min_lr) + min_lr
    if warmup_steps <= 0:
      return poly
    warmup_left = (1 - jnp.minimum(step, warmup) / warmup) * (1 - warmup_ratio)
    return (1 - warmup_left) * poly

  return schedule


def make_optimizer(schedule: optax.ScalarOrSchedule, momentum: float = 0.9,
                   weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """PyTorch's ``SGD(lr, momentum, weight_decay, dampening=0, nesterov=False)`` in optax.

  Per step: ``g = grad + weight_decay * param``; ``buf = momentum * buf + g`` (``buf = g`` on the
  first step, since optax's trace starts at zero); ``param -= lr(i) * buf``. Weight decay covers
  every parameter (conv kernels, BN scale/bias, classifier biases): the reference has a single
  parameter group. No gradient clipping, as in the reference.

  Args:
    schedule: the lr, a float or a function of the step count (e.g. ``poly_warmup_schedule()``).
    momentum: SGD momentum.
    weight_decay: L2 coefficient added to the gradient before the momentum.

  Returns:
    The optax transformation; apply its updates with ``optax.apply_updates``.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(schedule, momentum=momentum, nesterov=False),
  )
