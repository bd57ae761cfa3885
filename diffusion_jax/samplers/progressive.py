"""Progressive generation (DDPM paper, sec. 4.3, Fig. 6): the prediction x0_hat(x_t) along a chain.

Early in the reverse process x0_hat already shows the large-scale features of the final sample;
the details come last. The chain is recorded every few steps, and the network is read once more at
every recorded state to give its x0_hat (x itself once the chain reaches clean data).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import parametrization
from diffusion_jax.samplers import chain, registry
from diffusion_jax.schedules import Schedule


class Progression(NamedTuple):
  times: np.ndarray  # [F] the time index of each frame, noisiest first (-1: clean data)
  x_t: jax.Array  # [F, B, ...] the chain's state at those times
  x0_hat: jax.Array  # [F, B, ...] the model's prediction of clean data from each state


def frame_times(times: np.ndarray, every: int) -> np.ndarray:
  """The times of a trajectory recorded every `every` steps: the start, then after each recorded
  step (see `chain.recorded_steps`)."""
  steps = chain.recorded_steps(len(times) - 1, every)
  return np.asarray([times[0]] + [times[k + 1] for k in steps])


def record_every(num_steps: int, num_frames: int) -> int:
  """The recording period that gives about num_frames frames of a chain of num_steps steps."""
  return max(1, num_steps // (num_frames - 1))


def progressive_generation(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  shape: tuple[int, ...],
  key: jax.Array,
  spec: registry.SamplerSpec | None = None,
  *,
  num_frames: int = 10,
) -> Progression:
  """Samples [*shape] with a fixed-step sampler and returns about num_frames states and x0_hat.

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x, t).
    sched: the schedule the model was trained with.
    shape: [B, ...] of the samples.
    key: PRNG key, as in `samplers.sample`.
    spec: the sampler (default: ancestral).
    num_frames: frames wanted, >= 2 (the chain's steps may give a few more).
  """
  spec = spec or registry.SamplerSpec()
  if num_frames < 2:
    raise ValueError(f"num_frames must be >= 2, got {num_frames}")
  denoiser = parametrization.as_denoiser(model)
  times = registry.grid(spec, sched)
  every = record_every(len(times) - 1, num_frames)
  result = registry.sample(denoiser, sched, shape, key, spec, trajectory_every=every)
  at = frame_times(times, every)
  clip = registry.resolved_clip(spec, shape)

  def predict(x_t, t):
    denoised = denoiser(sched, x_t, jnp.full((shape[0],), t))
    x0 = (denoised.clip_x0() if clip else denoised).x0
    return jnp.where(t < 0, x_t, x0)

  x0_hat = jax.lax.map(lambda args: predict(*args), (result.trajectory, jnp.asarray(at)))
  return Progression(at, result.trajectory, x0_hat)
