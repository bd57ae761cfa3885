"""The continuous-time (VP-SDE) view of a discrete schedule, Song et al. (2021).

Convention: continuous time s lies in [0, 1]; the discrete index t = 0..T-1 (the paper's step t+1)
sits at the knot s_t = (t + 1) / T, and s = 0 is clean data (alpha-bar = 1). log alpha-bar(s) is the
piecewise-linear interpolation of log alpha-bar through the knots (0, 0), (s_t, log alpha-bar_t),
so alpha-bar(s_t) is the schedule's alpha-bar_t (up to the float32 rounding of s T) and
beta(s) = -d log alpha-bar / ds is piecewise constant: -T log(1 - beta_t) on (s_{t-1}, s_t].
Forward SDE (Song et al. eq. 11): dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw, whose marginal is
q(x_s | x_0) = N(sqrt(alpha-bar(s)) x_0, (1 - alpha-bar(s)) I), the DDPM eq. 4 law at the knots.

A noise predictor eps_fn(x, t) is called at the fractional index t(s) = s T - 1 (float32 [B]), and
its score is s_theta(x, s) = -eps_fn(x, t(s)) / sqrt(1 - alpha-bar(s)). Drifts take a scalar time
shared by the batch and x of any rank [B, ...].

Solvers integrate in lambda = log alpha-bar(s) instead of s (`pf_ode_drift_log_alpha_bar`): there
beta drops out, dx/dlambda = 1/2 (x + score), so the jumps of beta(s) at the knots, which would cap
a solver's order and fool an adaptive error estimate, are gone (the exact oracle is smooth in
lambda; a network sees t(s(lambda)), continuous with kinks at the knots).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.schedules import Schedule

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
_KNOT_TOL = 1e-3  # in index units, well above the float32 rounding of s T (~1e-4 at T = 1000)


def _log_alpha_bar_knots(sched: Schedule) -> jax.Array:
  """log alpha-bar at s = 0, 1/T, ..., 1, shape [T + 1]."""
  return jnp.concatenate([jnp.zeros((1,), jnp.float32), sched.log_alphas_cumprod])


def log_alpha_bar(sched: Schedule, s: jax.Array) -> jax.Array:
  """log alpha-bar(s), piecewise linear between the knots s_t = (t + 1) / T; s any shape."""
  knots = _log_alpha_bar_knots(sched)
  index = jnp.clip(jnp.asarray(s, jnp.float32) * sched.num_timesteps, 0.0, sched.num_timesteps)
  left = jnp.minimum(jnp.floor(index), sched.num_timesteps - 1)
  frac = index - left
  left = left.astype(jnp.int32)
  return (1.0 - frac) * knots[left] + frac * knots[left + 1]


def time_of_log_alpha_bar(sched: Schedule, lam: jax.Array) -> jax.Array:
  """The s with log alpha-bar(s) = lam (the inverse of `log_alpha_bar`), lam any shape in
  [log alpha-bar_T, 0]."""
  knots = _log_alpha_bar_knots(sched)  # decreasing
  lam = jnp.asarray(lam, jnp.float32)
  # knots[left] >= lam > knots[left + 1]: left + 1 knots lie above lam.
  above = jnp.searchsorted(-knots, -lam, side="left", method="compare_all")
  left = jnp.clip(above - 1, 0, sched.num_timesteps - 1)
  frac = (knots[left] - lam) / (knots[left] - knots[left + 1])
  return (left + jnp.clip(frac, 0.0, 1.0)) / sched.num_timesteps


def alpha_bar(sched: Schedule, s: jax.Array) -> jax.Array:
  """alpha-bar(s) = exp(log alpha-bar(s)); equals sched.alphas_cumprod[t] at s = (t + 1) / T."""
  return jnp.exp(log_alpha_bar(sched, s))


def one_minus_alpha_bar(sched: Schedule, s: jax.Array) -> jax.Array:
  """1 - alpha-bar(s), as -expm1(log alpha-bar(s)) so it keeps its digits near s = 0."""
  return -jnp.expm1(log_alpha_bar(sched, s))


def beta(sched: Schedule, s: jax.Array) -> jax.Array:
  """beta(s) = -d log alpha-bar / ds, constant on each (s_{t-1}, s_t] (left-continuous); any shape.

  Returns:
    T log(alpha-bar_{t-1} / alpha-bar_t) for the interval holding s (s <= 0 gives the first, s > 1
    the last), with s's shape.
  """
  num_steps = sched.num_timesteps
  slopes = -jnp.diff(_log_alpha_bar_knots(sched)) * num_steps  # [T]
  # At a knot s T lands a few float32 ulps off the integer: within _KNOT_TOL counts as the knot.
  index = jnp.asarray(s, jnp.float32) * num_steps
  interval = jnp.ceil(index - _KNOT_TOL).astype(jnp.int32) - 1
  return slopes[jnp.clip(interval, 0, num_steps - 1)]


def index_of(sched: Schedule, s: jax.Array) -> jax.Array:
  """The fractional network index t(s) = s T - 1, so t(s_t) = t; s any shape."""
  return jnp.asarray(s, jnp.float32) * sched.num_timesteps - 1.0


def time_of(sched: Schedule, t: jax.Array) -> jax.Array:
  """The continuous time s_t = (t + 1) / T of index t (int or float); the inverse of `index_of`."""
  return (jnp.asarray(t, jnp.float32) + 1.0) / sched.num_timesteps


def final_time(sched: Schedule, s_min: float | None = None) -> float:
  """Where samplers stop: s_min, by default 1/T, the knot of the first discrete step (t = 0)."""
  return 1.0 / sched.num_timesteps if s_min is None else s_min


def time_grid(sched: Schedule, num_steps: int, s_min: float | None = None) -> jax.Array:
  """Uniform grid from s = 1 down to `final_time(sched, s_min)`, float32 [num_steps + 1]."""
  return jnp.linspace(1.0, final_time(sched, s_min), num_steps + 1, dtype=jnp.float32)


def log_alpha_bar_grid(sched: Schedule, num_steps: int, s_min: float | None = None) -> jax.Array:
  """lambda = log alpha-bar(s) on `time_grid` (where the probability-flow ODE is integrated).

  Needs alpha-bar_T > 0 (not the `jsd` schedule, whose lambda(1) is -inf).
  """
  return log_alpha_bar(sched, time_grid(sched, num_steps, s_min))


def score(eps_fn: EpsFn, sched: Schedule, x: jax.Array, s: jax.Array) -> jax.Array:
  """s_theta(x, s) = -eps(x, t(s)) / sqrt(1 - alpha-bar(s)) for x [B, ...] and scalar s."""
  t_B = jnp.full((x.shape[0],), index_of(sched, s), jnp.float32)
  return -eps_fn(x, t_B) / jnp.sqrt(one_minus_alpha_bar(sched, s))


def pf_ode_drift(eps_fn: EpsFn, sched: Schedule, x: jax.Array, s: jax.Array) -> jax.Array:
  """Probability-flow ODE dx/ds = f - 1/2 g^2 score = -1/2 beta(s) (x + score), Song et al. eq. 13.

  With score = -eps / sqrt(1 - alpha-bar(s)): -1/2 beta(s) (x - eps / sqrt(1 - alpha-bar(s))).
  """
  return -0.5 * beta(sched, s) * (x + score(eps_fn, sched, x, s))


def pf_ode_drift_log_alpha_bar(
  eps_fn: EpsFn, sched: Schedule, x: jax.Array, lam: jax.Array
) -> jax.Array:
  """The probability-flow ODE in lambda = log alpha-bar: dx/dlambda = 1/2 (x + score(x, s(lambda))).

  Eq. 13 divided by dlambda/ds = -beta(s): the same trajectories as `pf_ode_drift`, x any rank
  [B, ...], lam a scalar.
  """
  return 0.5 * (x + score(eps_fn, sched, x, time_of_log_alpha_bar(sched, lam)))


def reverse_sde_drift(eps_fn: EpsFn, sched: Schedule, x: jax.Array, s: jax.Array) -> jax.Array:
  """Reverse-SDE drift f - g^2 score = -1/2 beta(s) x - beta(s) score, Song et al. eq. 6.

  The reverse SDE dx = [f - g^2 score] ds + g dw-bar runs with ds < 0, g(s) = sqrt(beta(s)).
  """
  b = beta(sched, s)
  return -0.5 * b * x - b * score(eps_fn, sched, x, s)
