"""Batched, sharded sample generation from a trained network, with a progress bar.

The network is a Flax module called as the `models` call contract says, read through its
`parametrization.Parametrization` (what it predicts).
"""

import functools
from collections.abc import Iterable, Iterator

import jax
import numpy as np
import tqdm
from flax import linen as nn
from jax.experimental import multihost_utils

from diffusion_jax import models, parametrization, sharding
from diffusion_jax.samplers import registry
from diffusion_jax.schedules import Schedule


# Module-level and keyed on its static arguments, so repeated calls (previews during training,
# batch after batch) reuse one compilation.
@functools.partial(
  jax.jit,
  static_argnames=(
    "model",
    "kind",
    "batch_shape",
    "mesh",
    "spec",
    "trajectory_every",
  ),
)
def _sample_batch(params, sched, key, *, model, kind, batch_shape, mesh, spec, trajectory_every):
  batch = sharding.batch_sharding(mesh)
  result = registry.sample(
    models.denoiser(model, params, kind),
    sched,
    batch_shape,
    key,
    spec,
    trajectory_every=trajectory_every,
    sharding=batch,
  )
  x0 = jax.lax.with_sharding_constraint(result.x, batch)
  if trajectory_every > 0:
    return x0, jax.lax.with_sharding_constraint(result.trajectory, sharding.frames_sharding(mesh))
  return x0, result.nfe


def make_sample_fn(
  model: nn.Module,
  kind: parametrization.Parametrization,
  sched: Schedule,
  batch_shape: tuple[int, ...],
  mesh,
  spec: registry.SamplerSpec,
  *,
  trajectory_every: int = 0,
):
  """A jitted fn(params, key) -> (x0 [B, ...], NFE per sample), or with trajectory_every > 0
  (x0, trajectory [F, B, ...]); the batch is split over devices."""
  sharding.check_batch_size(batch_shape[0], mesh, "sampling batch size")
  sample_fn = functools.partial(
    _sample_batch,
    model=model,
    kind=kind,
    batch_shape=tuple(batch_shape),
    mesh=mesh,
    spec=spec,
    trajectory_every=trajectory_every,
  )
  return lambda params, key: sample_fn(params, sched, key)


def sample_batches(
  model: nn.Module,
  kind: parametrization.Parametrization,
  params,
  sched: Schedule,
  example_shape: tuple[int, ...],
  batch_size: int,
  key: jax.Array,
  mesh,
  spec: registry.SamplerSpec,
  batch_indices: Iterable[int],
) -> Iterator[tuple[int, np.ndarray, int]]:
  """Draws the listed batches; batch i uses fold_in(key, i), so any subset can be (re)drawn alone.

  batch_size must be a multiple of the device count (see `device_batch_size`).

  Yields:
    (i, float32 samples [batch_size, *example_shape] on the host, network evaluations per sample).
  """
  sample_fn = make_sample_fn(model, kind, sched, (batch_size, *example_shape), mesh, spec)
  for i in batch_indices:
    x0, nfe = sample_fn(params, jax.random.fold_in(key, i))
    yield i, np.asarray(multihost_utils.process_allgather(x0, tiled=True)), int(nfe)


def device_batch_size(batch_size: int, num_samples: int, mesh) -> int:
  """min(batch_size, num_samples) rounded up to a multiple of the device count."""
  return -(-min(batch_size, num_samples) // mesh.size) * mesh.size


def generate(
  model: nn.Module,
  kind: parametrization.Parametrization,
  params,
  sched: Schedule,
  example_shape: tuple[int, ...],
  num_samples: int,
  batch_size: int,
  key: jax.Array,
  mesh,
  spec: registry.SamplerSpec,
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
    model, kind, params, sched, example_shape, batch_size, key, mesh, spec, range(num_batches)
  )
  bar = tqdm.tqdm(
    batches, total=num_batches, desc="sampling", unit="batch", disable=not progress, leave=False
  )
  out, nfes = [], []
  for _, x0, nfe in bar:
    out.append(x0)
    nfes.append(nfe)
  return np.concatenate(out)[:num_samples], float(np.mean(nfes))
