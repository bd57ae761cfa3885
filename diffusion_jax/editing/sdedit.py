"""SDEdit (Meng et al. 2022): image-to-image translation by noising an input part-way and denoising.

x_{t0} ~ q(x_{t0} | x_input) at t0 = strength T, then the reverse process of any sampler from t0
to clean data. A small strength keeps the input up to its noise level; strength 1 forgets it and
draws from the model.
"""

import jax

from diffusion_jax import parametrization
from diffusion_jax.samplers import SamplerSpec, Samples, sample
from diffusion_jax.schedules import Schedule


def sdedit(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  images: jax.Array,
  key: jax.Array,
  spec: SamplerSpec | None = None,
  *,
  strength: float,
  trajectory_every: int = 0,
  sharding=None,
) -> Samples:
  """Translates `images` [B, ...] from the grid's first time at or below strength T.

  Args:
    model: a `parametrization.Denoiser`, or a plain eps_fn(x, t).
    sched: the schedule the model was trained with.
    images: [B, ...] the inputs, in the data's range.
    key: PRNG key (the start noise and the steps', as in `samplers.sample`).
    spec: the sampler (default: ancestral).
    strength: t0 / T in (0, 1].
    trajectory_every: as in `samplers.sample`.
    sharding: the batch's sharding, for the noise, when run under jit on a mesh.

  Returns:
    Samples(x, nfe, trajectory or None).
  """
  return sample(
    model,
    sched,
    images.shape,
    key,
    spec,
    image=images,
    strength=strength,
    trajectory_every=trajectory_every,
    sharding=sharding,
  )
