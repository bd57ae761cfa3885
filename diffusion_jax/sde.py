"""The continuous-time (VP-SDE) view of a discrete schedule, Song et al. (2021).

Convention: continuous time s lies in [0, 1]; the discrete index t = 0..T-1 (the paper's step t+1)
sits at the knot s_t = (t + 1) / T, and s = 0 is clean data (alpha-bar = 1). log alpha-bar(s) is the
piecewise-linear interpolation of log alpha-bar through the knots (0, 0), (s_t, log alpha-bar_t),
so alpha-bar(s_t) is the schedule's alpha-bar_t exactly and beta(s) = -d log alpha-bar / ds is
piecewise constant: T log(alpha-bar_{t-1} / alpha-bar_t) = -T log(1 - beta_t) on (s_{t-1}, s_t].
Forward SDE (Song et al. eq. 11): dx = -1/2 beta(s) x ds + sqrt(beta(s)) dw, whose marginal is
q(x_s | x_0) = N(sqrt(alpha-bar(s)) x_0, (1 - alpha-bar(s)) I), the DDPM eq. 4 law at the knots.

A noise predictor eps_fn(x, t) is called at the fractional index t(s) = s T - 1 (float32 [B]), and
its score is s_theta(x, s) = -eps_fn(x, t(s)) / sqrt(1 - alpha-bar(s)). Drifts take a scalar s
shared by the batch and x of any rank [B, ...].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax.schedules import Schedule

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
_KNOT_TOL = 1e-3  # in index units; float32 rounding of s T is ~1e-4 at T = 1000


def _log_alpha_bar_knots(sched: Schedule) -> jax.Array:
  """log alpha-bar at s = 0, 1/T, ..., 1, shape [T + 1]."""
  return jnp.concatenate([jnp.zeros((1,), jnp.float32), jnp.log(sched.alphas_cumprod)])


def log_alpha_bar(sched: Schedule, s: jax.Array) -> jax.Array:
  """log alpha-bar(s), piecewise linear between the knots s_t = (t + 1) / T; s any shape."""
  knots = _log_alpha_bar_knots(sched)
  return jnp.interp(
    jnp.asarray(s, jnp.float32) * sched.num_timesteps, jnp.arange(knots.shape[0]), knots
  )


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
  # s T lands a few float32 ulps off an integer at a knot: within _KNOT_TOL of knot t counts as it.
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


def score(eps_fn: EpsFn, sched: Schedule, x: jax.Array, s: jax.Array) -> jax.Array:
  """s_theta(x, s) = -eps(x, t(s)) / sqrt(1 - alpha-bar(s)) for x [B, ...] and scalar s."""
  t_B = jnp.full((x.shape[0],), index_of(sched, s), jnp.float32)
  return -eps_fn(x, t_B) / jnp.sqrt(one_minus_alpha_bar(sched, s))


def pf_ode_drift(eps_fn: EpsFn, sched: Schedule, x: jax.Array, s: jax.Array) -> jax.Array:
  """Probability-flow ODE dx/ds = f - 1/2 g^2 score = -1/2 beta(s) (x + score), Song et al. eq. 13.

  With score = -eps / sqrt(1 - alpha-bar(s)): -1/2 beta(s) (x - eps / sqrt(1 - alpha-bar(s))).
  """
  return -0.5 * beta(sched, s) * (x + score(eps_fn, sched, x, s))


def reverse_sde_drift(eps_fn: EpsFn, sched: Schedule, x: jax.Array, s: jax.Array) -> jax.Array:
  """Reverse-SDE drift f - g^2 score = -1/2 beta(s) x - beta(s) score, Song et al. eq. 6.

  The reverse SDE dx = [f - g^2 score] ds + g dw-bar runs with ds < 0, g(s) = sqrt(beta(s)).
  """
  b = beta(sched, s)
  return -0.5 * b * x - b * score(eps_fn, sched, x, s)
