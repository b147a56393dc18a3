"""The reference optimizer: SGD with momentum and L2 weight decay, poly lr with linear warm-up.

sssegmentation trains with ``torch.optim.SGD(lr=0.05, momentum=0.9, weight_decay=5e-4)`` over one
parameter group and sets the lr before every step from the number of steps already taken
(docs/reference.md §4.2-4.3). optax passes exactly that count to a schedule, so a schedule here is a
plain function of it.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def poly_warmup_schedule(base_lr: float = 0.05, total_steps: int = 159_960, min_lr: float = 1e-4,
                         power: float = 0.9, warmup_steps: int = 1000,
                         warmup_ratio: float = 0.1) -> optax.Schedule:
  """The reference lr policy: poly decay whose value a linear warm-up *multiplies*.

  For step ``i`` (optimizer steps already taken)::

    poly(i) = (base_lr - min_lr) * (1 - i / total_steps) ** power + min_lr
    lr(i) = poly(i) * (warmup_ratio + (1 - warmup_ratio) * i / warmup_steps)  if i <= warmup_steps
    lr(i) = poly(i)                                                            otherwise

  The warm-up is a factor on the poly value, as in sssegmentation's PolyScheduler, so it cannot
  be built with ``optax.join_schedules`` or ``optax.warmup_*`` schedules: those switch from an
  additive warm-up ramp to the decay at a boundary, which gives a different lr during warm-up.
  Here ``optax.linear_schedule`` supplies the factor (it holds at 1.0 after ``warmup_steps``).

  The poly part is written out instead of using ``optax.polynomial_schedule``: that computes
  ``1 - i / total_steps`` in float32, which cancels catastrophically in the last steps (relative
  lr error up to 4e-5, e.g. 1.0104e-4 instead of the reference's 1.0103e-4 at the final step).
  ``(total_steps - i) / total_steps`` has an exact integer numerator, leaving an error < 2e-7.

  The returned function is jit-safe: ``i`` may be a traced integer scalar. Steps past
  ``total_steps`` get ``min_lr``. ``warmup_steps=0`` means no warm-up (Fast-SCNN's recipe).
  """
  warmup_factor = (optax.linear_schedule(init_value=warmup_ratio, end_value=1.0,
                                         transition_steps=warmup_steps)
                   if warmup_steps > 0 else optax.constant_schedule(1.0))

  def poly(step):
    steps_left = total_steps - jnp.clip(step, 0, total_steps)
    return (base_lr - min_lr) * (steps_left / total_steps) ** power + min_lr

  def schedule(step):
    return poly(step) * warmup_factor(step)

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
