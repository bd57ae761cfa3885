"""Probability-flow ODE solvers: fixed-step Euler and Heun, and adaptive Dormand-Prince 5(4).

`solve` integrates dy/ds = drift(y, s) for any pytree y of float32 arrays, in either direction of
s (data to noise, s increasing, or back); `sample` runs the probability-flow ODE of `sde` from
x(1) ~ N(0, I) down to s_min, by default 1/T, the knot of the first discrete step (t = 0), since
beta(s) and the score are only defined by the schedule on (0, 1].

NFE counts evaluations of `drift` (one network call each, for the probability-flow drift): Euler
uses N per N steps, Heun 2N, and the adaptive solver 1 + 6 per attempted step (first-same-as-last:
the 7th stage of an accepted step is the 1st of the next; rejected steps count too).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion_jax import sde
from diffusion_jax.schedules import Schedule

Drift = Callable[[Any, jax.Array], Any]
METHODS = ("euler", "heun", "adaptive")

# Dormand & Prince (1980) RK5(4)7M tableau: stage nodes c, stage weights a, the 5th-order weights b
# (also the 7th stage's row, hence first-same-as-last) and b - b*, b* the embedded 4th-order ones.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
  (),
  (1 / 5,),
  (3 / 40, 9 / 40),
  (44 / 45, -56 / 15, 32 / 9),
  (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
  (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
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


def _axpy(y: Any, h: jax.Array, coefs: tuple[float, ...], ks: list[Any]) -> Any:
  """y + h sum_i coefs_i k_i, leafwise over the pytrees y and k_i (zero coefficients skipped)."""
  pairs = [(c, k) for c, k in zip(coefs, ks, strict=True) if c != 0.0]

  def leaf(y_leaf, *k_leaves):
    return y_leaf + h * sum(c * k for (c, _), k in zip(pairs, k_leaves, strict=True))

  return jax.tree.map(leaf, y, *[k for _, k in pairs])


def euler(drift: Drift, y: Any, grid: jax.Array) -> Any:
  """Explicit Euler y <- y + h drift(y, s) along grid [N + 1] (either direction); returns y(end)."""

  def step(y, s_pair):
    s, s_next = s_pair
    return _axpy(y, s_next - s, (1.0,), [drift(y, s)]), None

  y_end, _ = jax.lax.scan(step, y, (grid[:-1], grid[1:]))
  return y_end


def heun(drift: Drift, y: Any, grid: jax.Array) -> Any:
  """Heun's 2nd-order method (explicit trapezoid) along grid [N + 1]; returns y(end).

  k1 = drift(y, s), k2 = drift(y + h k1, s + h), y <- y + h (k1 + k2) / 2.
  """

  def step(y, s_pair):
    s, s_next = s_pair
    h = s_next - s
    k1 = drift(y, s)
    k2 = drift(_axpy(y, h, (1.0,), [k1]), s_next)
    return _axpy(y, h, (0.5, 0.5), [k1, k2]), None

  y_end, _ = jax.lax.scan(step, y, (grid[:-1], grid[1:]))
  return y_end


def _rms(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
  return jnp.sqrt(total / sum(leaf.size for leaf in leaves))


def adaptive(
  drift: Drift,
  y: Any,
  s_start: float,
  s_end: float,
  *,
  rtol: float = 1e-5,
  atol: float = 1e-5,
  max_steps: int = 4096,
) -> tuple[Any, jax.Array]:
  """Dormand-Prince 5(4) with step-size control, as one `jax.lax.while_loop` on device.

  The error estimate e = h sum_i (b_i - b*_i) k_i is scaled by atol + rtol max(|y|, |y_new|)
  elementwise and reduced by RMS over all elements of all leaves (the whole batch shares one step);
  a step is accepted when that norm is <= 1, and the next h is h * clip(0.9 norm^(-1/5), 0.2, 10).
  The first h is 0.01 RMS(y) / RMS(drift(y)) (a simplified Hairer et al., Solving ODEs I, II.4),
  capped at the span; the last step lands on s_end exactly.

  Args:
    drift: dy/ds = drift(y, s), with y a pytree of float32 arrays and s a scalar.
    y: the state at s_start.
    s_start, s_end: the span, in either order.
    rtol, atol: relative and absolute tolerances.
    max_steps: cap on attempted steps; if hit, the returned y is at an s short of s_end.

  Returns:
    (y at s_end, NFE as int32).
  """
  s_start, s_end = jnp.float32(s_start), jnp.float32(s_end)
  direction = jnp.sign(s_end - s_start)
  k1 = drift(y, s_start)
  h0 = jnp.clip(0.01 * _rms(y) / jnp.maximum(_rms(k1), 1e-6), 1e-6, jnp.abs(s_end - s_start))

  def attempt(carry):
    s, y, k1, h_abs, nfe, steps = carry
    remaining = jnp.abs(s_end - s)
    h_abs = jnp.minimum(h_abs, remaining)
    h = direction * h_abs
    ks = [k1]
    for c, a in zip(_C[1:], _A[1:], strict=True):
      ks.append(drift(_axpy(y, h, a, ks), s + c * h))
    y_new = _axpy(y, h, _B, ks)
    s_new = jnp.where(h_abs >= remaining, s_end, s + h)
    k7 = drift(y_new, s_new)
    err = _axpy(jax.tree.map(jnp.zeros_like, y), h, _B_ERR, ks + [k7])
    scaled = jax.tree.map(
      lambda e, a, b: e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))), err, y, y_new
    )
    norm = _rms(scaled)
    accept = norm <= 1.0
    factor = jnp.clip(_SAFETY * jnp.maximum(norm, 1e-10) ** -0.2, _MIN_FACTOR, _MAX_FACTOR)
    pick = lambda new, old: jax.tree.map(lambda n, o: jnp.where(accept, n, o), new, old)
    return (
      jnp.where(accept, s_new, s),
      pick(y_new, y),
      pick(k7, k1),
      h_abs * factor,
      nfe + 6,
      steps + 1,
    )

  def not_done(carry):
    s, _, _, _, _, steps = carry
    return (s != s_end) & (steps < max_steps)

  init = (s_start, y, k1, h0, jnp.int32(1), jnp.int32(0))
  _, y_end, _, _, nfe, _ = jax.lax.while_loop(not_done, attempt, init)
  return y_end, nfe


def solve(
  drift: Drift,
  y: Any,
  s_start: float,
  s_end: float,
  *,
  method: str = "adaptive",
  num_steps: int = 100,
  rtol: float = 1e-5,
  atol: float = 1e-5,
) -> tuple[Any, jax.Array]:
  """Integrates dy/ds = drift(y, s) from s_start to s_end (either direction) with `method`.

  Args:
    drift: dy/ds = drift(y, s) for a pytree y and scalar s.
    y: the state at s_start.
    s_start, s_end: the span.
    method: `euler` or `heun` (num_steps uniform steps in s) or `adaptive` (rtol, atol).
    num_steps: steps of the fixed-step methods.
    rtol, atol: tolerances of the adaptive method.

  Returns:
    (y at s_end, NFE as int32).
  """
  if method == "adaptive":
    return adaptive(drift, y, s_start, s_end, rtol=rtol, atol=atol)
  grid = jnp.linspace(s_start, s_end, num_steps + 1, dtype=jnp.float32)
  if method == "euler":
    return euler(drift, y, grid), jnp.int32(num_steps)
  if method == "heun":
    return heun(drift, y, grid), jnp.int32(2 * num_steps)
  raise ValueError(f"unknown ODE method {method!r}; choose one of {', '.join(METHODS)}")


def sample(
  eps_fn: sde.EpsFn,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  method: str = "adaptive",
  num_steps: int = 100,
  s_min: float | None = None,
  rtol: float = 1e-5,
  atol: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
  """Probability-flow ODE sampling: x(1) ~ N(0, I), then `solve` from s = 1 to s_min (default 1/T).

  Args:
    eps_fn: the noise predictor, called at fractional indices t(s) = s T - 1.
    sched: the schedule the model was trained with.
    shape: [B, ...] shape of the samples.
    key: PRNG key (only the starting noise is random).
    method, num_steps, rtol, atol: as in `solve`.
    s_min: the final time; default 1/T.

  Returns:
    (x(s_min) [B, ...], NFE as int32).
  """
  s_end = sde.final_time(sched, s_min)
  x_1 = jax.random.normal(key, shape, jnp.float32)
  drift = lambda x, s: sde.pf_ode_drift(eps_fn, sched, x, s)
  return solve(drift, x_1, 1.0, s_end, method=method, num_steps=num_steps, rtol=rtol, atol=atol)
