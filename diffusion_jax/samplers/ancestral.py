"""Ancestral sampling, DDPM Algorithm 2, on any subsequence of the timesteps.

The step from grid time t down to s draws x_s ~ p(x_s | x_t) = N(mu, sigma^2 I): mu is the mean of
the step's posterior q(x_s | x_t, x0) at the predicted x0 (`diffusion.step_posterior`; with s =
t - 1 this is DDPM eq. 11), sigma^2 is the step's beta (`fixedlarge`), its posterior variance
beta-tilde (`fixedsmall`), or the network's interpolation between their logs (`learned`, Nichol &
Dhariwal 2021, eq. 15). On a subsequence tau this is the respaced chain of Nichol & Dhariwal
(2021, sec. 4). The last step (to clean data) returns the mean, with no noise.

Classifier guidance adds Sigma g to the mean, g = s grad log p_t(y | x_t) (Dhariwal & Nichol 2021,
Algorithm 1), with Sigma = sigma^2 the variance the step draws with (0 on the last step).
"""

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, guidance, parametrization
from diffusion_jax.samplers import noise
from diffusion_jax.samplers.chain import StepSampler
from diffusion_jax.schedules import Schedule

VARIANCES = ("fixedlarge", "fixedsmall", "learned")


def step_log_variance(
  posterior: diffusion.StepPosterior, variance: str, fraction: jax.Array | None
) -> jax.Array:
  """log sigma^2 of a step: log beta, log beta-tilde, or f log beta + (1 - f) log beta-tilde.

  Only used where the step adds noise (not into clean data, where beta-tilde is 0).
  """
  if variance == "fixedlarge":
    return jnp.log(posterior.beta)
  if variance == "fixedsmall":
    return jnp.log(posterior.variance)
  if variance == "learned":
    if fraction is None:
      raise ValueError("variance='learned' needs a denoiser with learned_variance=True")
    return fraction * jnp.log(posterior.beta) + (1.0 - fraction) * jnp.log(posterior.variance)
  raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")


def make_sampler(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  times: jax.Array,
  *,
  variance: str = "fixedlarge",
  clip_x0: bool = False,
  sharding=None,
  mean_gradient: guidance.Gradient | None = None,
) -> StepSampler:
  """Ancestral steps along the int32 grid `times` (see `timesteps.discrete_grid`).

  Args:
    denoiser: the model.
    sched: the schedule it was trained with (may be traced).
    times: (tau_S, ..., tau_1, -1).
    variance: `fixedlarge`, `fixedsmall` or `learned`.
    clip_x0: clip the predicted x0 to [-1, 1] (for data in [-1, 1]).
    sharding: the batch's sharding, for the noise.
    mean_gradient: classifier guidance's g(x_t, t [B]); each step's mean moves by sigma^2 g.
  """
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")

  def step(carry, k, key):
    x, aux = carry
    t, s = times[k], times[k + 1]
    denoised = denoiser(sched, x, t)
    if clip_x0:
      denoised = denoised.clip_x0()
    posterior = diffusion.step_posterior(sched, t, s)
    mean = posterior.coef_x0 * denoised.x0 + posterior.coef_xt * x
    log_variance = step_log_variance(posterior, variance, denoised.variance_fraction)
    std = jnp.where(s >= 0, jnp.exp(0.5 * log_variance), 0.0)
    if mean_gradient is not None:
      mean = mean + jnp.square(std) * mean_gradient(x, jnp.full((x.shape[0],), t))
    z = noise.normal(key, x.shape, sharding)
    return mean + std * z, aux

  return StepSampler(times=times, step=step)
