"""Reverse-process samplers, each one `jax.lax.scan` over the steps, for any eps_fn(x, t).

`eps_fn(x, t)` takes x [B, ...] and int32 timestep indices t [B] in 0..T-1 and returns eps with x's
shape: a Flax network, or an analytic oracle.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion
from diffusion_jax.schedules import Schedule

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def sharded_normal(key: jax.Array, shape: tuple[int, ...], sharding) -> jax.Array:
  """Standard normal float32 noise, laid out by `sharding` when one is given."""
  z = jax.random.normal(key, shape, jnp.float32)
  # Keep the noise laid out like the batch, so each device draws only its own share.
  return z if sharding is None else jax.lax.with_sharding_constraint(z, sharding)


def num_trajectory_frames(num_timesteps: int, every: int) -> int:
  """Frames kept: x_T, then the state after each step whose index is a multiple of `every`."""
  return 1 + (num_timesteps - 1) // every + 1


def sample(
  eps_fn: EpsFn,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  *,
  variance: str = "fixedlarge",
  clip_x0: bool = True,
  trajectory_every: int = 0,
  sharding=None,
):
  """Ancestral sampling, DDPM Algorithm 2: x_T ~ N(0, I), then x_{t-1} ~ p(x_{t-1} | x_t) to x0.

  The noise at step index t is drawn from fold_in(key, t), so a batch is a pure function of `key`.

  Args:
    eps_fn: the noise predictor.
    sched: the schedule the model was trained with.
    shape: [B, ...] shape of the samples.
    key: PRNG key.
    variance: `fixedlarge` or `fixedsmall` reverse variance.
    clip_x0: clip the predicted x0 to [-1, 1] at every step (for data in [-1, 1]).
    trajectory_every: if > 0, also return the states [F, B, ...] at x_T and after every step whose
      index is a multiple of it (F = num_trajectory_frames(T, trajectory_every)).
    sharding: optional sharding for the noise (the batch's), when run under jit on a mesh.

  Returns:
    x0 [B, ...], or (x0, trajectory) when trajectory_every > 0.
  """
  num_steps = sched.num_timesteps
  init_key, step_key = jax.random.split(key)
  x_T = sharded_normal(init_key, shape, sharding)

  def reverse_step(x, t):
    t_B = jnp.full((shape[0],), t, jnp.int32)
    mean, _, log_var, _ = diffusion.p_mean_variance(
      sched, eps_fn(x, t_B), x, t_B, variance=variance, clip_x0=clip_x0
    )
    z = sharded_normal(jax.random.fold_in(step_key, t), shape, sharding)
    return mean + jnp.where(t > 0, jnp.exp(0.5 * log_var), 0.0) * z  # no noise at the last step

  return scan_steps(reverse_step, x_T, num_steps, trajectory_every)


def scan_steps(step_fn, x_T: jax.Array, num_steps: int, trajectory_every: int = 0):
  """x <- step_fn(x, i) for i = num_steps - 1 down to 0, as one `lax.scan`.

  Args:
    step_fn: (x, int32 step index) -> x.
    x_T: the starting state.
    num_steps: the number of steps.
    trajectory_every: if > 0, also keep x_T and the state after every step whose index is a
      multiple of it, in the order they occur (num_trajectory_frames(num_steps, every) frames).

  Returns:
    the final state, or (final state, frames [F, *x_T.shape]) when trajectory_every > 0.
  """
  indices = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
  if trajectory_every <= 0:
    x0, _ = jax.lax.scan(lambda x, i: (step_fn(x, i), None), x_T, indices)
    return x0

  frames = jnp.zeros((num_trajectory_frames(num_steps, trajectory_every),) + x_T.shape, x_T.dtype)
  frames = frames.at[0].set(x_T)
  last_multiple = (num_steps - 1) // trajectory_every

  def step_and_record(carry, i):
    x, frames = carry
    x = step_fn(x, i)
    slot = 1 + last_multiple - i // trajectory_every
    frames = jax.lax.cond(
      i % trajectory_every == 0, lambda f: f.at[slot].set(x), lambda f: f, frames
    )
    return (x, frames), None

  (x0, frames), _ = jax.lax.scan(step_and_record, (x_T, frames), indices)
  return x0, frames
