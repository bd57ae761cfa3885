"""Batched, sharded sample generation from a trained network, with a progress bar."""

import functools

import jax
import numpy as np
import tqdm
from flax import linen as nn
from jax.experimental import multihost_utils

from diffusion_jax import sampling, sharding
from diffusion_jax.schedules import Schedule


def make_eps_fn(model: nn.Module, params) -> sampling.EpsFn:
  """Wraps a network as eps_fn(x, t) in inference mode."""
  return lambda x, t: model.apply({"params": params}, x, t, train=False)


# Module-level and keyed on its static arguments, so repeated calls (previews during training,
# batch after batch) reuse one compilation.
@functools.partial(
  jax.jit,
  static_argnames=("model", "batch_shape", "mesh", "variance", "clip_x0", "trajectory_every"),
)
def _sample_batch(
  params, key, sched, *, model, batch_shape, mesh, variance, clip_x0, trajectory_every
):
  batch = sharding.batch_sharding(mesh)
  out = sampling.sample(
    make_eps_fn(model, params),
    sched,
    batch_shape,
    key,
    variance=variance,
    clip_x0=clip_x0,
    trajectory_every=trajectory_every,
    sharding=batch,
  )
  if trajectory_every <= 0:
    return jax.lax.with_sharding_constraint(out, batch)
  x0, frames = out
  return (
    jax.lax.with_sharding_constraint(x0, batch),
    jax.lax.with_sharding_constraint(frames, sharding.frames_sharding(mesh)),
  )


def make_sample_fn(
  model: nn.Module,
  sched: Schedule,
  batch_shape: tuple[int, ...],
  mesh,
  *,
  variance: str,
  clip_x0: bool,
  trajectory_every: int = 0,
):
  """A jitted fn(params, key) -> x0 [B, ...] (and the trajectory), its batch split over devices."""
  sharding.check_batch_size(batch_shape[0], mesh, "sampling batch size")
  return functools.partial(
    _sample_batch,
    sched=sched,
    model=model,
    batch_shape=tuple(batch_shape),
    mesh=mesh,
    variance=variance,
    clip_x0=clip_x0,
    trajectory_every=trajectory_every,
  )


def generate(
  model: nn.Module,
  params,
  sched: Schedule,
  example_shape: tuple[int, ...],
  num_samples: int,
  batch_size: int,
  key: jax.Array,
  mesh,
  *,
  variance: str = "fixedlarge",
  clip_x0: bool = True,
  progress: bool = True,
) -> np.ndarray:
  """Draws num_samples samples in batches; batch i uses fold_in(key, i).

  The batch size is rounded up to a multiple of the device count; extra samples are dropped.

  Returns:
    float32 [num_samples, *example_shape] on the host.
  """
  batch_size = -(-min(batch_size, num_samples) // mesh.size) * mesh.size
  sample_fn = make_sample_fn(
    model, sched, (batch_size, *example_shape), mesh, variance=variance, clip_x0=clip_x0
  )
  num_batches = -(-num_samples // batch_size)
  out = []
  bar = tqdm.trange(num_batches, desc="sampling", unit="batch", disable=not progress, leave=False)
  for i in bar:
    x0 = sample_fn(params, jax.random.fold_in(key, i))
    out.append(np.asarray(multihost_utils.process_allgather(x0, tiled=True)))
  return np.concatenate(out)[:num_samples]
