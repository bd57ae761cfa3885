"""The Gaussian diffusion maths of DDPM: forward process, posterior, reverse-step parameters, loss.

Pure functions of a `Schedule` and arrays; no network code. `t` is an int array [B] of timestep
indices 0..T-1 (see `schedules`), and every per-timestep coefficient is broadcast against an example
of any rank (images [B, H, W, C], vectors [B, D]).
"""

import jax
import jax.numpy as jnp

from diffusion_jax.schedules import Schedule

VARIANCES = ("fixedlarge", "fixedsmall")


def extract(coef_T: jax.Array, t_B: jax.Array, x: jax.Array) -> jax.Array:
  """Gathers coef[t] and reshapes it to [B, 1, ..., 1] so it broadcasts against x."""
  return coef_T[t_B].reshape((t_B.shape[0],) + (1,) * (x.ndim - 1))


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
  eps: jax.Array,
  x_t: jax.Array,
  t: jax.Array,
  *,
  variance: str = "fixedlarge",
  clip_x0: bool = False,
):
  """Parameters of p(x_{t-1} | x_t) for an eps-predicting network whose output at (x_t, t) is eps.

  The mean is the posterior mean at the predicted x0 (optionally clipped to [-1, 1]); without
  clipping this equals eq. 11, (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t).

  Returns:
    (mean, variance, log_variance, x0_pred); variance and log_variance broadcast against x_t.
  """
  x0_pred = predict_x0_from_eps(sched, x_t, t, eps)
  if clip_x0:
    x0_pred = jnp.clip(x0_pred, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(sched, x0_pred, x_t, t)
  var_T, log_var_T = reverse_variance(sched, variance)
  return mean, extract(var_T, t, x_t), extract(log_var_T, t, x_t), x0_pred


def l_simple(eps: jax.Array, eps_pred: jax.Array) -> jax.Array:
  """L_simple per example, eq. 14: mean over all non-batch axes of (eps - eps_pred)^2, shape [B]."""
  sq = jnp.square(eps - eps_pred)
  return jnp.mean(sq.reshape(sq.shape[0], -1), axis=1)
