"""Batched, sharded sample generation from a trained network, with a progress bar."""

import functools
from collections.abc import Iterable, Iterator

import jax
import numpy as np
import tqdm
from flax import linen as nn
from jax.experimental import multihost_utils

from diffusion_jax import samplers, sampling, sharding
from diffusion_jax.schedules import Schedule


def make_eps_fn(model: nn.Module, params) -> sampling.EpsFn:
  """Wraps a network as eps_fn(x, t) in inference mode."""
  return lambda x, t: model.apply({"params": params}, x, t, train=False)


class _StaticSchedule:
  """A schedule as a static jit argument (hashed by its betas): samplers such as respaced ancestral
  sampling build new coefficients from it on the host."""

  def __init__(self, sched: Schedule):
    self.sched = sched
    self._key = np.asarray(sched.betas).tobytes()

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _StaticSchedule) and self._key == other._key


# Module-level and keyed on its static arguments, so repeated calls (previews during training,
# batch after batch) reuse one compilation.
@functools.partial(
  jax.jit,
  static_argnames=("static_sched", "model", "batch_shape", "mesh", "spec", "trajectory_every"),
)
def _sample_batch(params, key, *, static_sched, model, batch_shape, mesh, spec, trajectory_every):
  batch = sharding.batch_sharding(mesh)
  eps_fn = make_eps_fn(model, params)
  if trajectory_every > 0:  # the reverse process of the full ancestral chain, for animations
    x0, frames = sampling.sample(
      eps_fn,
      static_sched.sched,
      batch_shape,
      key,
      variance=spec.variance,
      clip_x0=spec.clip_x0,
      trajectory_every=trajectory_every,
      sharding=batch,
    )
    frames = jax.lax.with_sharding_constraint(frames, sharding.frames_sharding(mesh))
    return jax.lax.with_sharding_constraint(x0, batch), frames
  x0, nfe = samplers.run(spec, eps_fn, static_sched.sched, batch_shape, key, sharding=batch)
  return jax.lax.with_sharding_constraint(x0, batch), nfe


def make_sample_fn(
  model: nn.Module,
  sched: Schedule,
  batch_shape: tuple[int, ...],
  mesh,
  spec: samplers.SamplerSpec,
  *,
  trajectory_every: int = 0,
):
  """A jitted fn(params, key) -> (x0 [B, ...], NFE per sample), or with trajectory_every > 0
  (x0, ancestral trajectory [F, B, ...]); the batch is split over devices."""
  sharding.check_batch_size(batch_shape[0], mesh, "sampling batch size")
  return functools.partial(
    _sample_batch,
    static_sched=_StaticSchedule(sched),
    model=model,
    batch_shape=tuple(batch_shape),
    mesh=mesh,
    spec=spec,
    trajectory_every=trajectory_every,
  )


def sample_batches(
  model: nn.Module,
  params,
  sched: Schedule,
  example_shape: tuple[int, ...],
  batch_size: int,
  key: jax.Array,
  mesh,
  spec: samplers.SamplerSpec,
  batch_indices: Iterable[int],
) -> Iterator[tuple[int, np.ndarray, int]]:
  """Draws the listed batches; batch i uses fold_in(key, i), so any subset can be (re)drawn alone.

  batch_size must be a multiple of the device count (see `device_batch_size`).

  Yields:
    (i, float32 samples [batch_size, *example_shape] on the host, network evaluations per sample).
  """
  sample_fn = make_sample_fn(model, sched, (batch_size, *example_shape), mesh, spec)
  for i in batch_indices:
    x0, nfe = sample_fn(params, jax.random.fold_in(key, i))
    yield i, np.asarray(multihost_utils.process_allgather(x0, tiled=True)), int(nfe)


def device_batch_size(batch_size: int, num_samples: int, mesh) -> int:
  """min(batch_size, num_samples) rounded up to a multiple of the device count."""
  return -(-min(batch_size, num_samples) // mesh.size) * mesh.size


def generate(
  model: nn.Module,
  params,
  sched: Schedule,
  example_shape: tuple[int, ...],
  num_samples: int,
  batch_size: int,
  key: jax.Array,
  mesh,
  spec: samplers.SamplerSpec,
  *,
  progress: bool = True,
) -> tuple[np.ndarray, float]:
  """Draws num_samples samples in batches; batch i uses fold_in(key, i).

  The batch size is rounded up to a multiple of the device count; extra samples are dropped.

  Returns:
    (float32 [num_samples, *example_shape] on the host, mean network evaluations per sample).
  """
  batch_size = device_batch_size(batch_size, num_samples, mesh)
  num_batches = -(-num_samples // batch_size)
  batches = sample_batches(
    model, params, sched, example_shape, batch_size, key, mesh, spec, range(num_batches)
  )
  bar = tqdm.tqdm(
    batches, total=num_batches, desc="sampling", unit="batch", disable=not progress, leave=False
  )
  out, nfes = [], []
  for _, x0, nfe in bar:
    out.append(x0)
    nfes.append(nfe)
  return np.concatenate(out)[:num_samples], float(np.mean(nfes))
