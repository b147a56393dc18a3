"""Tests of bisenet_jax.train.optim against docs/reference.md §4.2-4.3 and torch.optim.SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from bisenet_jax.train.optim import make_optimizer, poly_warmup_schedule

TOTAL = 159_960


def reference_lr(i: int) -> float:
  """docs/reference.md §4.3 in float64 Python, with sssegmentation's order of operations."""
  poly = (1 - i / TOTAL) ** 0.9 * (0.05 - 1e-4) + 1e-4
  return (1 - (1 - i / 1000) * (1 - 0.1)) * poly if i <= 1000 else poly


# docs/reference.md §4.3 "checked values", compared to exactly the digits printed there.
@pytest.mark.parametrize('step, spec, printed', [
    (0, '.6f', '0.005000'), (1, '.7f', '0.0050450'), (500, '.7f', '0.0274228'),
    (1000, '.7f', '0.0497192'), (80000, '.7f', '0.0268347'), (159959, '.4e', '1.0103e-04')])
def test_schedule_matches_reference_values(step, spec, printed):
  assert format(float(poly_warmup_schedule()(step)), spec) == printed


def test_schedule_matches_float64_formula_jitted():
  steps = np.unique(np.concatenate([np.arange(0, 1200), np.linspace(0, TOTAL, 5001).astype(int),
                                    np.arange(TOTAL - 100, TOTAL + 1)]))
  got = jax.jit(jax.vmap(poly_warmup_schedule()))(jnp.asarray(steps, jnp.int32))
  want = np.array([reference_lr(int(i)) for i in steps])
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6)


def test_float64_schedule_is_the_float64_formula():
  """A float64 run's lr is float64 (optax's float32 schedules gave 0.005000001285 at step 0)."""
  steps = np.concatenate([np.arange(0, 1010), np.arange(TOTAL - 10, TOTAL + 1), [80000]])
  with jax.enable_x64(True):
    schedule = jax.jit(poly_warmup_schedule(dtype=jnp.float64))  # A scalar step, as in training.
    got = [schedule(jnp.int32(i)) for i in steps]
    assert {lr.dtype for lr in got} == {jnp.dtype(jnp.float64)}
  np.testing.assert_allclose(np.array(got), [reference_lr(int(i)) for i in steps], rtol=1e-15)


def test_schedule_holds_min_lr_after_the_end():
  assert float(poly_warmup_schedule()(TOTAL + 10)) == pytest.approx(1e-4, rel=1e-6)


def _torch_sgd_steps(params, grads, lr):
  tensors = [torch.tensor(p, requires_grad=True) for p in params]
  optimizer = torch.optim.SGD(tensors, lr=lr, momentum=0.9, weight_decay=5e-4)
  history = []
  for step_grads in grads:
    for tensor, grad in zip(tensors, step_grads):
      tensor.grad = torch.tensor(grad)
    optimizer.step()
    history.append([t.detach().numpy().copy() for t in tensors])
  return history


def _optax_steps(optimizer, params, grads):
  params = [jnp.asarray(p) for p in params]
  state = optimizer.init(params)
  history = []
  for step_grads in grads:
    updates, state = optimizer.update([jnp.asarray(g) for g in step_grads], state, params)
    params = optax.apply_updates(params, updates)
    history.append([np.asarray(p) for p in params])
  return history


def test_make_optimizer_matches_torch_sgd():
  rng = np.random.default_rng(0)
  shapes = [(3, 3, 4, 8), (8,), (8,), (1, 1, 8, 19), (19,)]  # conv, BN scale/bias, classifier.
  params = [rng.normal(size=s).astype(np.float32) for s in shapes]
  grads = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)]
  want = _torch_sgd_steps(params, grads, lr=0.05)
  got = _optax_steps(make_optimizer(0.05), params, grads)
  for step, (got_step, want_step) in enumerate(zip(got, want)):  # step 0: momentum buffer = g.
    for g, w in zip(got_step, want_step):
      # atol ~ float32 spacing at 1: parameters of size O(1) that land near 0 lose all
      # relative precision to the cancellation in `param - lr * buf`, in both frameworks.
      np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=f'step {step}')


def test_make_optimizer_uses_pre_step_count_for_lr():
  schedule = poly_warmup_schedule()
  params, grad = jnp.ones(4), jnp.full(4, 2.0)
  optimizer = make_optimizer(schedule)
  state = optimizer.init(params)
  updates, _ = optimizer.update(grad, state, params)
  np.testing.assert_allclose(updates, -0.005 * (2.0 + 5e-4), rtol=1e-6)  # lr(0) = 0.005.


def test_no_warm_up_is_the_plain_poly_decay():
  """Fast-SCNN's recipe: lr 0.12 poly (power 0.9, min 1e-4) over 162,750 steps, no warm-up."""
  schedule = poly_warmup_schedule(0.12, 162_750, 1e-4, 0.9, warmup_steps=0)
  for step in (0, 1, 1000, 100_000, 162_749):
    expected = (0.12 - 1e-4) * (1 - step / 162_750) ** 0.9 + 1e-4
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
