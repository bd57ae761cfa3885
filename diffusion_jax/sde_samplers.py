"""Reverse-SDE samplers: Euler-Maruyama, optionally with Langevin correctors (Song et al. 2021).

Time runs on the `sde` grid from s = 1 down to s_min (default 1/T). Each sampler is one
`jax.lax.scan`; the noise of grid step i comes from fold_in(key, i), so a batch is a pure function
of `key`. NFE = num_steps (1 + corrector_steps).
"""

import jax
import jax.numpy as jnp

from diffusion_jax import sde
from diffusion_jax.schedules import Schedule


def _mean_norm(v: jax.Array) -> jax.Array:
  """The batch mean of the per-example norms ||v_b|| (over the non-batch axes) of v [B, ...]."""
  return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=1))


def langevin_step(
  eps_fn: sde.EpsFn, sched: Schedule, x: jax.Array, s: jax.Array, key: jax.Array, snr: float
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
  g = sde.score(eps_fn, sched, x, s)
  z = jax.random.normal(key, x.shape, jnp.float32)
  alpha = jnp.exp(-sde.beta(sched, s) / sched.num_timesteps)
  step = 2.0 * alpha * jnp.square(snr * _mean_norm(z) / _mean_norm(g))
  return x + step * g + jnp.sqrt(2.0 * step) * z


def sample(
  eps_fn: sde.EpsFn,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  num_steps: int = 1000,
  corrector_steps: int = 0,
  snr: float = 0.16,
  s_min: float | None = None,
) -> jax.Array:
  """Predictor-corrector sampling of the reverse SDE, Song et al. Algorithm 3 (VP).

  From x(1) ~ N(0, I), each grid step s_i -> s_{i+1} (h = s_{i+1} - s_i < 0) first runs
  `corrector_steps` Langevin steps at s_i (none: plain Euler-Maruyama), then the Euler-Maruyama
  predictor of the reverse SDE (eq. 6), x <- x + h [f - g^2 score](x, s_i) + sqrt(beta(s_i) |h|) z
  = x + B (x / 2 + score) + sqrt(B) z with B = beta(s_i) |h|. B is taken as its exact value
  int_{s_{i+1}}^{s_i} beta ds = log alpha-bar(s_{i+1}) - log alpha-bar(s_i), so a step that spans
  several of beta's pieces is not biased towards the one at s_i. The last predictor step adds no
  noise, as in DDPM Algorithm 2.

  Args:
    eps_fn: the noise predictor, called at fractional indices t(s) = s T - 1.
    sched: the schedule the model was trained with.
    shape: [B, ...] shape of the samples.
    key: PRNG key.
    num_steps: predictor steps, uniform in s from 1 to s_min.
    corrector_steps: Langevin steps before each predictor step.
    snr: the corrector's target signal-to-noise ratio.
    s_min: the final time; default 1/T.

  Returns:
    x(s_min) [B, ...].
  """
  grid = sde.time_grid(sched, num_steps, s_min)
  lam = sde.log_alpha_bar(sched, grid)
  init_key, step_key = jax.random.split(key)
  x_1 = jax.random.normal(init_key, shape, jnp.float32)

  def step(x, inputs):
    i, s, lam_i, lam_next = inputs
    keys = jax.random.split(jax.random.fold_in(step_key, i), corrector_steps + 1)
    for j in range(corrector_steps):
      x = langevin_step(eps_fn, sched, x, s, keys[j], snr)
    b = lam_next - lam_i  # int beta ds over the step
    mean = x + b * (0.5 * x + sde.score(eps_fn, sched, x, s))
    z = jax.random.normal(keys[corrector_steps], shape, jnp.float32)
    return mean + jnp.where(i < num_steps - 1, jnp.sqrt(b), 0.0) * z, None

  steps = (jnp.arange(num_steps), grid[:-1], lam[:-1], lam[1:])
  x_end, _ = jax.lax.scan(step, x_1, steps)
  return x_end
