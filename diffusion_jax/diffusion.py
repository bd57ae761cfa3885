"""The Gaussian diffusion maths of DDPM: forward process, posteriors, reverse-step parameters.

Pure functions of a `Schedule` and arrays; no network code. `t` is an int array [B] of timestep
indices 0..T-1 (see `schedules`), and every per-timestep coefficient is broadcast against an example
of any rank (images [B, H, W, C], vectors [B, D]). `noise_level` and `step_posterior` also take
-1 for clean data and fractional (continuous-time) indices.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion_jax import continuous_time
from diffusion_jax.schedules import Schedule

VARIANCES = ("fixedlarge", "fixedsmall")


def extract(coef_T: jax.Array, t_B: jax.Array, x: jax.Array) -> jax.Array:
  """Gathers coef[t] and reshapes it to [B, 1, ..., 1] so it broadcasts against x."""
  return coef_T[t_B].reshape((t_B.shape[0],) + (1,) * (x.ndim - 1))


def log_alpha_bar_at(sched: Schedule, t: jax.Array) -> jax.Array:
  """log abar at timestep indices t of any shape: int t reads the schedule (t = -1 is clean data,
  log abar = 0); float t is continuous time s = (t + 1) / T (see `continuous_time`), equal at
  integer t."""
  t = jnp.asarray(t)
  if jnp.issubdtype(t.dtype, jnp.integer):
    return jnp.where(t < 0, 0.0, sched.log_alphas_cumprod[jnp.maximum(t, 0)])
  return continuous_time.log_alpha_bar(sched, continuous_time.time_of(sched, t))


def log_alpha_bar_ratio(sched: Schedule, t: jax.Array, s: jax.Array) -> jax.Array:
  """log(abar_t / abar_s) for int timesteps (-1: clean data), from the float64-exact split of log
  abar into two float32 parts, so that short steps far down the chain keep their digits."""
  t, s = jnp.asarray(t), jnp.asarray(s)

  def parts(u):
    u_safe = jnp.maximum(u, 0)
    clean = u < 0
    hi = jnp.where(clean, 0.0, sched.log_alphas_cumprod[u_safe])
    return hi, jnp.where(clean, 0.0, sched.log_alphas_cumprod_remainder[u_safe])

  (hi_t, lo_t), (hi_s, lo_s) = parts(t), parts(s)
  return (hi_t - hi_s) + (lo_t - lo_s)


def noise_level(sched: Schedule, t_B: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(alpha_t, sigma_t) = (sqrt(abar_t), sqrt(1 - abar_t)) at t [B], shaped [B, 1, ..., 1] for x.

  Integer t (t = -1 for clean data) reads the float64-derived tables; float t is continuous time.
  """
  t_B = jnp.asarray(t_B)
  if jnp.issubdtype(t_B.dtype, jnp.integer):
    clean = t_B < 0
    t_safe = jnp.maximum(t_B, 0)
    alpha = jnp.where(clean, 1.0, sched.sqrt_alphas_cumprod[t_safe])
    sigma = jnp.where(clean, 0.0, sched.sqrt_one_minus_alphas_cumprod[t_safe])
  else:
    log_abar = log_alpha_bar_at(sched, t_B)
    alpha, sigma = jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))
  shape = (t_B.shape[0],) + (1,) * (x.ndim - 1)
  return alpha.reshape(shape), sigma.reshape(shape)


class StepPosterior(NamedTuple):
  """q(x_s | x_t, x0) = N(coef_x0 x0 + coef_xt x_t, variance) for a step from t down to s < t."""

  coef_x0: jax.Array
  coef_xt: jax.Array
  variance: jax.Array  # beta-tilde of the step; 0 when s is clean data
  beta: jax.Array  # 1 - abar_t / abar_s, the step's own beta


def step_posterior(sched: Schedule, t: jax.Array, s: jax.Array) -> StepPosterior:
  """The posterior of any step t -> s < t (int timesteps; s = -1: clean data), from log abar.

  The forward process restricted to timesteps ..., s, t, ... is a DDPM forward process whose step
  has beta_{t|s} = 1 - abar_t / abar_s (DDIM, Song et al. 2021, eq. 7 with sigma = beta-tilde), so
  DDPM eqs. 6-7 give coef_x0 = sqrt(abar_s) beta_{t|s} / (1 - abar_t), coef_xt =
  sqrt(1 - beta_{t|s}) (1 - abar_s) / (1 - abar_t) and beta-tilde = beta_{t|s} (1 - abar_s) /
  (1 - abar_t). From differences of the float64-derived log abar, so a short step keeps its
  digits. With s = t - 1 this is the schedule's own posterior; t and s broadcast together.
  """
  log_abar_t, log_abar_s = log_alpha_bar_at(sched, t), log_alpha_bar_at(sched, s)
  log_ratio = log_alpha_bar_ratio(sched, t, s)
  beta = -jnp.expm1(log_ratio)
  one_minus_t, one_minus_s = -jnp.expm1(log_abar_t), -jnp.expm1(log_abar_s)
  return StepPosterior(
    coef_x0=jnp.exp(0.5 * log_abar_s) * beta / one_minus_t,
    coef_xt=jnp.exp(0.5 * log_ratio) * one_minus_s / one_minus_t,
    variance=beta * one_minus_s / one_minus_t,
    beta=beta,
  )


def q_mean_variance(sched: Schedule, x0: jax.Array, t: jax.Array):
  """Mean, variance and log-variance of q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I), eq. 4."""
  mean = extract(sched.sqrt_alphas_cumprod, t, x0) * x0
  # From the float64-derived sqrt: 1 - alphas_cumprod in float32 loses digits when abar_t ~ 1.
  variance = extract(jnp.square(sched.sqrt_one_minus_alphas_cumprod), t, x0)
  log_variance = extract(sched.log_one_minus_alphas_cumprod, t, x0)
  return mean, variance, log_variance


def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x0) as sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
  return (
    extract(sched.sqrt_alphas_cumprod, t, x0) * x0
    + extract(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise
  )


def q_sample_from(
  sched: Schedule, x_s: jax.Array, s: jax.Array, t: jax.Array, noise: jax.Array
) -> jax.Array:
  """Draws x_t ~ q(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, (1 - abar_t / abar_s) I) for a time t
  noisier than s (scalar int indices, -1 for clean data, or float continuous times): the forward
  process from x_s straight to t, whose one step has beta_{t|s} (DDIM eq. 7)."""
  t, s = jnp.asarray(t), jnp.asarray(s)
  if jnp.issubdtype(t.dtype, jnp.integer):
    log_ratio = log_alpha_bar_ratio(sched, t, s)
  else:
    log_ratio = log_alpha_bar_at(sched, t) - log_alpha_bar_at(sched, s)
  return jnp.exp(0.5 * log_ratio) * x_s + jnp.sqrt(-jnp.expm1(log_ratio)) * noise


def q_posterior_mean_variance(sched: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
  """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0), DDPM eqs. 6-7."""
  mean = (
    extract(sched.posterior_mean_coef1, t, x_t) * x0
    + extract(sched.posterior_mean_coef2, t, x_t) * x_t
  )
  variance = extract(sched.posterior_variance, t, x_t)
  log_variance = extract(sched.posterior_log_variance_clipped, t, x_t)
  return mean, variance, log_variance


def predict_x0_from_eps(sched: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array):
  """Inverts eq. 4: x0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps."""
  return (
    extract(sched.sqrt_recip_alphas_cumprod, t, x_t) * x_t
    - extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
  )


def reverse_variance(sched: Schedule, variance: str) -> tuple[jax.Array, jax.Array]:
  """sigma_t^2 and its log for p(x_{t-1} | x_t), each [T].

  `fixedlarge`: sigma_t^2 = beta_t, except beta-tilde_2 at the first step (better for the
  likelihood, as in the original code); `fixedsmall`: sigma_t^2 = beta-tilde_t, its log clipped
  at t = 1.
  """
  if variance == "fixedlarge":
    first = sched.posterior_variance[1:2] if sched.num_timesteps > 1 else sched.betas[:1]
    var = jnp.concatenate([first, sched.betas[1:]])
    return var, jnp.log(var)
  if variance == "fixedsmall":
    return sched.posterior_variance, sched.posterior_log_variance_clipped
  raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")


def p_mean_variance(
  sched: Schedule,
  x0_pred: jax.Array,
  x_t: jax.Array,
  t: jax.Array,
  *,
  variance: str = "fixedlarge",
  variance_fraction: jax.Array | None = None,
):
  """Parameters of p(x_{t-1} | x_t) on the full chain, for a network's prediction of x0 at (x_t, t).

  The mean is the posterior mean at x0_pred (for an eps prediction this is eq. 11,
  (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)); the variance is fixed (see
  `reverse_variance`) or `learned`: exp(f log beta_t + (1 - f) log beta-tilde_t) with the network's
  fraction f (Nichol & Dhariwal 2021, eq. 15; beta-tilde's log clipped at t = 0 as in the table).

  Returns:
    (mean, variance, log_variance); the variance broadcasts against x_t.
  """
  mean, _, _ = q_posterior_mean_variance(sched, x0_pred, x_t, t)
  if variance == "learned":
    if variance_fraction is None:
      raise ValueError("variance='learned' needs the network's variance fraction")
    log_beta = extract(jnp.log(sched.betas), t, x_t)
    log_tilde = extract(sched.posterior_log_variance_clipped, t, x_t)
    log_var = variance_fraction * log_beta + (1.0 - variance_fraction) * log_tilde
    return mean, jnp.exp(log_var), log_var
  var_T, log_var_T = reverse_variance(sched, variance)
  return mean, extract(var_T, t, x_t), extract(log_var_T, t, x_t)
