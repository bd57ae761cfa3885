"""DDIM (Song, Meng & Ermon 2021): sampling on a timestep subsequence, and deterministic encoding.

The step from grid time t to s, with alpha = sqrt(abar) and sigma = sqrt(1 - abar) (eq. 12):
  x_s = alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps + sigma_eta z,
  sigma_eta = eta sqrt(beta-tilde of the step) (eq. 16),
with (eps, x0_hat) the network's reading of x_t; at s = clean data it returns x0_hat. eta = 0 is
the deterministic DDIM (an Euler step of the probability-flow ODE in its own variables); eta = 1 is
ancestral sampling with sigma^2 = beta-tilde (`fixedsmall`) on the respaced chain.

With eta = 0 the same update runs upwards, from t to s > t, as an encoder x0 -> x_T (the
"DDIM inversion" used for interpolation and editing): the network is read at the noisier end, s,
with the state at t, and x0_hat uses t's noise level. Each step then inverts the decoding step it
mirrors up to the change of eps between the two ends, so decode(encode(x)) returns x to within
the error of the steps' discretization.
"""

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, parametrization
from diffusion_jax.samplers import noise
from diffusion_jax.samplers.chain import StepSampler
from diffusion_jax.schedules import Schedule


def make_sampler(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  times: jax.Array,
  *,
  eta: float = 0.0,
  clip_x0: bool = False,
  sharding=None,
) -> StepSampler:
  """DDIM steps along the int32 grid `times` (see `timesteps.discrete_grid`).

  Args:
    denoiser: the model.
    sched: the schedule it was trained with (may be traced).
    times: (tau_S, ..., tau_1, -1) to sample; increasing from -1 to encode (eta = 0 only).
    eta: a Python float in [0, 1]: 0 deterministic, 1 ancestral.
    clip_x0: clip x0_hat to [-1, 1] (for data in [-1, 1]); eps is re-derived from it.
    sharding: the batch's sharding, for the noise.
  """
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}")

  def step(carry, k, key):
    x, aux = carry
    t, s = times[k], times[k + 1]
    denoised = denoiser(sched, x, jnp.maximum(t, s))  # read at the noisier end
    if clip_x0:
      denoised = denoised.clip_x0()
    alpha_t, sigma_t = diffusion.noise_level(sched, jnp.full((x.shape[0],), t), x)
    alpha_s, sigma_s = diffusion.noise_level(sched, jnp.full((x.shape[0],), s), x)
    eps = denoised.eps
    # Decoding, x0_hat is the network's own; encoding, it is read at x_t's noise level t.
    x0 = jnp.where(t > s, denoised.x0, (x - sigma_t * eps) / alpha_t)
    x = alpha_s * x0 + sigma_s * eps  # eq. 12 with eta = 0
    if eta > 0:
      # eq. 16: sigma_eta^2 = eta^2 beta-tilde; the direction term shrinks to keep the variance.
      var_eta = eta**2 * diffusion.step_posterior(sched, t, s).variance
      dir_coef = jnp.sqrt(jnp.maximum(jnp.square(sigma_s) - var_eta, 0.0))
      x = alpha_s * x0 + dir_coef * eps + jnp.sqrt(var_eta) * noise.normal(key, x.shape, sharding)
    return x, aux

  return StepSampler(times=times, step=step)
