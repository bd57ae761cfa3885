"""Reverse-SDE sampling: Euler-Maruyama, optionally with Langevin correctors (Song et al. 2021).

Time runs on a continuous-time grid from s = 1 down to s_min (default 1/T). NFE = steps
(1 + corrector_steps).
"""

import jax
import jax.numpy as jnp

from diffusion_jax import continuous_time, parametrization
from diffusion_jax.samplers import noise, probability_flow
from diffusion_jax.samplers.chain import StepSampler
from diffusion_jax.schedules import Schedule


def _mean_norm(v: jax.Array) -> jax.Array:
  """The batch mean of the per-example norms ||v_b|| (over the non-batch axes) of v [B, ...]."""
  return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=1))


def langevin_step(
  eps_fn: continuous_time.EpsFn,
  sched: Schedule,
  x: jax.Array,
  s: jax.Array,
  key: jax.Array,
  snr: float,
) -> jax.Array:
  """One Langevin corrector step towards q_s, Song et al. Algorithm 5 (VP SDE).

  x <- x + e score + sqrt(2 e) z with e = 2 alpha (snr ||z|| / ||score||)^2, where
  alpha = alpha-bar(s) / alpha-bar(s - 1/T) = exp(-beta(s) / T) (1 - beta_t at the knots). As in
  Song et al.'s code the norms are batch means of per-example norms, so e is shared by the batch:
  a per-example ||score|| can be ~0 near a mode in low dimension, which would make e blow up.

  Args:
    eps_fn, sched: the model and its schedule.
    x: the state [B, ...] at time s (scalar).
    key: PRNG key of z.
    snr: the target signal-to-noise ratio r; the step makes ||e score|| / ||sqrt(2 e) z|| equal to
      sqrt(alpha) r (in batch means).

  Returns:
    The corrected x [B, ...].
  """
  g = continuous_time.score(eps_fn, sched, x, s)
  z = jax.random.normal(key, x.shape, jnp.float32)
  alpha = jnp.exp(-continuous_time.beta(sched, s) / sched.num_timesteps)
  step = 2.0 * alpha * jnp.square(snr * _mean_norm(z) / _mean_norm(g))
  return x + step * g + jnp.sqrt(2.0 * step) * z


def make_sampler(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  times: jax.Array,
  *,
  corrector_steps: int = 0,
  snr: float = 0.16,
  clip_x0: bool = False,
  sharding=None,
) -> StepSampler:
  """Predictor-corrector sampling of the reverse SDE, Song et al. Algorithm 3 (VP), as steps on the
  float32 grid `times` (t(s) = s T - 1 for s uniform from 1 to s_min, `timesteps.continuous_grid`).

  Each step s_i -> s_{i+1} (h = s_{i+1} - s_i < 0) first runs `corrector_steps` Langevin steps at
  s_i (none: plain Euler-Maruyama), then the Euler-Maruyama predictor of the reverse SDE (eq. 6),
  x <- x + h [f - g^2 score](x, s_i) + sqrt(beta(s_i) |h|) z = x + B (x / 2 + score) + sqrt(B) z
  with B = beta(s_i) |h|. B is taken as its exact value int_{s_{i+1}}^{s_i} beta ds =
  log alpha-bar(s_{i+1}) - log alpha-bar(s_i), so a step that spans several of beta's pieces is not
  biased towards the one at s_i. The last predictor step adds no noise, as in DDPM Algorithm 2.

  Args:
    denoiser: the model; it is read at fractional timesteps.
    sched: the schedule it was trained with.
    times: the grid.
    corrector_steps: Langevin steps before each predictor step.
    snr: the corrector's target signal-to-noise ratio.
    clip_x0: clip x0 to [-1, 1] in the score (for data in [-1, 1]).
    sharding: the batch's sharding, for the noise.
  """
  fn = probability_flow.eps_fn(denoiser, sched, clip_x0)
  s_grid = continuous_time.time_of(sched, times)
  lam = continuous_time.log_alpha_bar(sched, s_grid)
  num_steps = times.shape[0] - 1

  def step(carry, k, key):
    x, aux = carry
    s = s_grid[k]
    keys = jax.random.split(key, corrector_steps + 1)
    for j in range(corrector_steps):
      x = langevin_step(fn, sched, x, s, keys[j], snr)
    b = lam[k + 1] - lam[k]  # int beta ds over the step
    mean = x + b * (0.5 * x + continuous_time.score(fn, sched, x, s))
    z = noise.normal(keys[corrector_steps], x.shape, sharding)
    return mean + jnp.where(k < num_steps - 1, jnp.sqrt(b), 0.0) * z, aux

  return StepSampler(times=times, step=step, nfe_per_step=1 + corrector_steps)
