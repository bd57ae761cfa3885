"""DDIM sampling (Song, Meng & Ermon 2021) on a timestep subsequence, for any eps_fn(x, t).

Step tau_i -> tau_{i-1}, with abar for the paper's alpha and abar_prev = abar_{tau_{i-1}} (eq. 12):
  x_{tau_{i-1}} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_i^2) eps + sigma_i z,
  sigma_i = eta sqrt((1 - abar_prev) / (1 - abar_{tau_i})) sqrt(1 - abar_{tau_i} / abar_prev) (16),
and abar_prev = 1 at the last step (tau_1 -> x0), which therefore returns x0_hat. eta = 0 is the
deterministic DDIM ODE sampler; eta = 1 is ancestral sampling with sigma^2 = beta-tilde
(`fixedsmall`) on the chain respaced to tau (see `respacing`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, respacing, sampling
from diffusion_jax.schedules import Schedule


def ddim_sample(
  eps_fn: sampling.EpsFn,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  timesteps: Sequence[int],
  eta: float = 0.0,
  clip_x0: bool = True,
  x_T: jax.Array | None = None,
  trajectory_every: int = 0,
  sharding=None,
):
  """DDIM from x_T ~ N(0, I) at tau_S down to x0, one model call per timestep (S in all).

  As in `sampling.sample`, x_T is drawn from split(key)[0] and the step leaving tau_i draws its
  noise from fold_in(split(key)[1], i - 1), i - 1 being the respaced chain's index; so eta = 1
  takes the same noise as `sample(..., variance="fixedsmall")` on the respaced chain (or the full
  one) with the same key, and reproduces its samples up to round-off.

  Args:
    eps_fn: the noise predictor, called with the original timestep indices tau_i.
    sched: the schedule the model was trained with (may be traced).
    shape: [B, ...] shape of the samples.
    key: PRNG key.
    timesteps: tau_1 < ... < tau_S in 0..T-1 (e.g. `respacing.timestep_subsequence`); a tuple
      when it is a static argument of `jax.jit`.
    eta: a Python float in [0, 1]: 0 deterministic, 1 ancestral.
    clip_x0: clip x0_hat to [-1, 1] (for data in [-1, 1]), eps then re-derived from it.
    x_T: optional starting point [B, ...] instead of one drawn from `key` (which then only drives
      the per-step noise), e.g. to map a fixed latent deterministically with eta = 0.
    trajectory_every: if > 0, also return the states [F, B, ...] at x_T and after every step
      whose respaced index i - 1 is a multiple of it (F = num_trajectory_frames(S, every)), as
      `sampling.sample` does.
    sharding: optional sharding for the noise (the batch's), when run under jit on a mesh.

  Returns:
    x0 [B, ...], or (x0, trajectory) when trajectory_every > 0.
  """
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta}")
  taus = respacing.check_timesteps(timesteps, sched.num_timesteps)
  init_key, step_key = jax.random.split(key)
  if x_T is None:
    x_T = sampling.sharded_normal(init_key, shape, sharding)
  taus_S = jnp.asarray(taus, jnp.int32)
  _, sqrt_abar_prev = respacing.step_pairs(sched.sqrt_alphas_cumprod, taus, 1.0)
  std, std_prev = respacing.step_pairs(sched.sqrt_one_minus_alphas_cumprod, taus, 0.0)
  var, var_prev = jnp.square(std), jnp.square(std_prev)  # 1 - abar, from the float64 derivation
  # eq. 16 with 1 - abar / abar_prev = (var - var_prev) / abar_prev, free of float32 cancellation.
  sigma2 = eta**2 * var_prev * (var - var_prev) / (var * jnp.square(sqrt_abar_prev))
  sigma = jnp.sqrt(sigma2)
  dir_coef = jnp.sqrt(jnp.maximum(var_prev - sigma2, 0.0))  # >= 0 exactly; guards round-off

  def step(x, i):
    t_B = jnp.full((shape[0],), taus_S[i], jnp.int32)
    eps = eps_fn(x, t_B)
    x0 = diffusion.predict_x0_from_eps(sched, x, t_B, eps)
    if clip_x0:
      x0 = jnp.clip(x0, -1.0, 1.0)
      # eq. 4 solved for eps at the clipped x0, so that eta = 1 keeps the posterior mean.
      sqrt_abar = diffusion.extract(sched.sqrt_alphas_cumprod, t_B, x)
      eps = (x - sqrt_abar * x0) / diffusion.extract(sched.sqrt_one_minus_alphas_cumprod, t_B, x)
    x = sqrt_abar_prev[i] * x0 + dir_coef[i] * eps  # eq. 12
    if eta > 0:
      x = x + sigma[i] * sampling.sharded_normal(jax.random.fold_in(step_key, i), shape, sharding)
    return x

  return sampling.scan_steps(step, x_T, len(taus), trajectory_every)
