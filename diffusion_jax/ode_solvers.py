"""ODE solvers for the probability-flow ODE and its likelihood: fixed-step Euler and Heun, and
adaptive Dormand-Prince 5(4) with step-size control.

`solve` integrates dy/dr = drift(y, r) for any pytree y of float32 arrays along a time grid, in
either direction. NFE counts evaluations of `drift`: Euler uses N per N steps, Heun 2N, and the
adaptive solver 1 + 6 per attempted step (first-same-as-last: the 7th stage of an accepted step is
the 1st of the next; rejected steps count too).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Drift = Callable[[Any, jax.Array], Any]
METHODS = ("euler", "heun", "adaptive")

# Dormand & Prince (1980) RK5(4)7M: stage nodes c_i and the stage matrix a_ij, whose last row is the
# 5th-order weights b (first-same-as-last: stage 7 is drift(y_new), the next step's stage 1), and
# the error weights b - b*, b* the embedded 4th-order ones.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
  (0.0,) * 7,
  (1 / 5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
  (3 / 40, 9 / 40, 0.0, 0.0, 0.0, 0.0, 0.0),
  (44 / 45, -56 / 15, 32 / 9, 0.0, 0.0, 0.0, 0.0),
  (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0, 0.0, 0.0),
  (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0.0, 0.0),
  (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
)
_B_ERR = (
  35 / 384 - 5179 / 57600,
  0.0,
  500 / 1113 - 7571 / 16695,
  125 / 192 - 393 / 640,
  -2187 / 6784 + 92097 / 339200,
  11 / 84 - 187 / 2100,
  -1 / 40,
)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


def _axpy(y: Any, h: jax.Array, k: Any) -> Any:
  """y + h k, leafwise over the pytrees y and k."""
  return jax.tree.map(lambda y_leaf, k_leaf: y_leaf + h * k_leaf, y, k)


def euler_step(drift: Drift, y: Any, r: jax.Array, r_next: jax.Array) -> Any:
  """One explicit Euler step y + h drift(y, r), h = r_next - r (either direction)."""
  return _axpy(y, r_next - r, drift(y, r))


def heun_step(drift: Drift, y: Any, r: jax.Array, r_next: jax.Array) -> Any:
  """One step of Heun's 2nd-order method (explicit trapezoid), h = r_next - r.

  k1 = drift(y, r), k2 = drift(y + h k1, r + h), y <- y + h (k1 + k2) / 2.
  """
  h = r_next - r
  k1 = drift(y, r)
  k2 = drift(_axpy(y, h, k1), r_next)
  return _axpy(y, 0.5 * h, jax.tree.map(jnp.add, k1, k2))


def _along(one_step, drift: Drift, y: Any, grid: jax.Array) -> Any:
  """Applies one_step between consecutive times of grid [N + 1], as one scan; y at grid[-1]."""

  def step(y, r_pair):
    return one_step(drift, y, *r_pair), None

  y_end, _ = jax.lax.scan(step, y, (grid[:-1], grid[1:]))
  return y_end


def euler(drift: Drift, y: Any, grid: jax.Array) -> Any:
  """Explicit Euler along the times grid [N + 1] (either direction); returns y at grid[-1]."""
  return _along(euler_step, drift, y, grid)


def heun(drift: Drift, y: Any, grid: jax.Array) -> Any:
  """Heun's method along the times grid [N + 1] (either direction); returns y at grid[-1]."""
  return _along(heun_step, drift, y, grid)


def _rms(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
  return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


def _error_norm(scaled: Any) -> jax.Array:
  """The worst example's error: max over leaves and leading (batch) index of the RMS over the
  remaining axes, so one example's accuracy does not depend on the rest of the batch."""
  per_leaf = [
    jnp.max(jnp.sqrt(jnp.mean(jnp.square(leaf.reshape(leaf.shape[0], -1)), axis=1)))
    if leaf.ndim
    else jnp.abs(leaf)
    for leaf in jax.tree.leaves(scaled)
  ]
  return jnp.max(jnp.stack(per_leaf))


def adaptive(
  drift: Drift,
  y: Any,
  start: float,
  end: float,
  *,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  max_steps: int = 4096,
) -> tuple[Any, jax.Array]:
  """Dormand-Prince 5(4) with step-size control, as one `jax.lax.while_loop` on device.

  The error estimate e = h sum_i (b_i - b*_i) k_i is scaled by atol + rtol max(|y|, |y_new|)
  elementwise and reduced to the worst example's RMS (every leaf's leading axis is the batch, which
  shares one step size); a step is accepted when that norm is <= 1, and the next h is
  h * clip(0.9 norm^(-1/5), 0.2, 10).
  The first h is 0.01 RMS(y) / RMS(drift(y)) (a simplified Hairer et al., Solving ODEs I, II.4),
  capped at the span; the last step lands on `end` exactly.

  Args:
    drift: dy/dr = drift(y, r), with y a pytree of float32 arrays [B, ...] and r a scalar time.
    y: the state at `start`.
    start, end: the span of r, in either order.
    rtol, atol: relative and absolute tolerances.
    max_steps: cap on attempted steps; if hit, the returned y is at an r short of `end`.

  Returns:
    (y at `end`, NFE as int32).
  """
  start, end = jnp.float32(start), jnp.float32(end)
  direction = jnp.sign(end - start)
  k1 = drift(y, start)
  h0 = jnp.clip(0.01 * _rms(y) / jnp.maximum(_rms(k1), 1e-6), 1e-6, jnp.abs(end - start))
  c_S, a_SS, e_S = (jnp.asarray(v, jnp.float32) for v in (_C, _A, _B_ERR))

  def combine(y, h, w_S, ks):
    """y + h sum_i w_i k_i, for stages ks stacked along a leading axis [7, ...] of each leaf."""
    return jax.tree.map(lambda y_, k: y_ + h * jnp.tensordot(w_S, k, axes=1), y, ks)

  def attempt(carry):
    r, y, k1, h_abs, nfe, steps = carry
    remaining = jnp.abs(end - r)
    h_abs = jnp.minimum(h_abs, remaining)
    h = direction * h_abs

    def stage(i, ks):  # k_i = drift(y + h sum_j a_ij k_j, r + c_i h): one drift call traced
      k_i = drift(combine(y, h, a_SS[i], ks), r + c_S[i] * h)
      return jax.tree.map(lambda k, new: k.at[i].set(new), ks, k_i)

    ks = jax.tree.map(lambda k: jnp.zeros((7,) + k.shape, k.dtype).at[0].set(k), k1)
    ks = jax.lax.fori_loop(1, 7, stage, ks)
    y_new = combine(y, h, a_SS[6], ks)
    err = combine(jax.tree.map(jnp.zeros_like, y), h, e_S, ks)
    scaled = jax.tree.map(
      lambda e, a, b: e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))), err, y, y_new
    )
    norm = _error_norm(scaled)
    accept = norm <= 1.0
    factor = jnp.clip(_SAFETY * jnp.maximum(norm, 1e-10) ** -0.2, _MIN_FACTOR, _MAX_FACTOR)
    pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)
    return (
      jnp.where(accept, jnp.where(h_abs >= remaining, end, r + h), r),
      pick(y_new, y),
      pick(jax.tree.map(lambda k: k[6], ks), k1),
      h_abs * factor,
      nfe + 6,
      steps + 1,
    )

  def not_done(carry):
    r, _, _, _, _, steps = carry
    return (r != end) & (steps < max_steps)

  init = (start, y, k1, h0, jnp.int32(1), jnp.int32(0))
  _, y_end, _, _, nfe, _ = jax.lax.while_loop(not_done, attempt, init)
  return y_end, nfe


def solve(
  drift: Drift,
  y: Any,
  grid: jax.Array,
  *,
  method: str = "adaptive",
  rtol: float = 1e-5,
  atol: float = 1e-5,
) -> tuple[Any, jax.Array]:
  """Integrates dy/dr = drift(y, r) along grid [N + 1] of times r (either direction) with `method`.

  Args:
    drift: dy/dr = drift(y, r) for a pytree y and scalar r.
    y: the state at grid[0].
    grid: the times; `euler` and `heun` step through them, `adaptive` goes from grid[0] to grid[-1]
      choosing its own steps.
    method: `euler`, `heun` or `adaptive`.
    rtol, atol: tolerances of the adaptive method.

  Returns:
    (y at grid[-1], NFE as int32).
  """
  num_steps = grid.shape[0] - 1
  if method == "adaptive":
    return adaptive(drift, y, grid[0], grid[-1], rtol=rtol, atol=atol)
  if method == "euler":
    return euler(drift, y, grid), jnp.int32(num_steps)
  if method == "heun":
    return heun(drift, y, grid), jnp.int32(2 * num_steps)
  raise ValueError(f"unknown ODE method {method!r}; choose one of {', '.join(METHODS)}")
