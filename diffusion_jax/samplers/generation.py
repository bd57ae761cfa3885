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

from diffusion_jax import guidance, models, parametrization, sharding
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
    "guidance_scale",
    "classifier_model",
    "classifier_scale",
  ),
)
def _sample_batch(
  params,
  sched,
  key,
  labels,
  classifier_params,
  *,
  model,
  kind,
  batch_shape,
  mesh,
  spec,
  trajectory_every,
  guidance_scale,
  classifier_model,
  classifier_scale,
):
  batch = sharding.batch_sharding(mesh)
  if labels is not None:
    labels = jax.lax.with_sharding_constraint(labels, batch)
  conditional = labels if models.num_classes_of(model) else None
  denoiser = models.denoiser(model, params, kind, labels=conditional, guidance_scale=guidance_scale)
  gradient = None
  if classifier_model is not None:
    log_prob = models.classifier_log_prob(classifier_model, classifier_params)
    gradient = guidance.classifier_gradient(log_prob, labels, classifier_scale)
  result = registry.sample(
    denoiser,
    sched,
    batch_shape,
    key,
    spec,
    trajectory_every=trajectory_every,
    sharding=batch,
    guidance_gradient=gradient,
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
  guidance_scale: float = 0.0,
  classifier: tuple[nn.Module, dict] | None = None,
  classifier_scale: float = 1.0,
):
  """A jitted fn(params, key, labels=None) -> (x0 [B, ...], NFE per sample), or with
  trajectory_every > 0 (x0, trajectory [F, B, ...]); the batch is split over devices.

  labels: int [B] classes for a conditional model (None: its null class), drawn with
  classifier-free guidance of scale `guidance_scale` (`guidance.classifier_free`); with a
  (classifier module, params), also classifier guidance of scale classifier_scale towards them
  (`guidance.classifier_gradient`; Algorithm 1 for ancestral sampling, else Algorithm 2), for
  conditional and unconditional models alike.
  """
  classifier_model, classifier_params = classifier or (None, None)
  sharding.check_batch_size(batch_shape[0], mesh, "sampling batch size")
  sample_fn = functools.partial(
    _sample_batch,
    model=model,
    kind=kind,
    batch_shape=tuple(batch_shape),
    mesh=mesh,
    spec=spec,
    trajectory_every=trajectory_every,
    guidance_scale=float(guidance_scale),
    classifier_model=classifier_model,
    classifier_scale=float(classifier_scale),
  )

  def run(params, key, labels=None):
    if labels is not None:
      labels = np.asarray(labels, np.int32)
    elif classifier_model is not None:
      raise ValueError("classifier guidance needs the labels to guide towards")
    return sample_fn(params, sched, key, labels, classifier_params)

  return run


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
  *,
  labels: np.ndarray | None = None,
  guidance_scale: float = 0.0,
  classifier: tuple[nn.Module, dict] | None = None,
  classifier_scale: float = 1.0,
) -> Iterator[tuple[int, np.ndarray, int]]:
  """Draws the listed batches; batch i uses fold_in(key, i), so any subset can be (re)drawn alone.

  batch_size must be a multiple of the device count (see `device_batch_size`). With labels (int,
  one per sample of all batches), batch i draws the classes labels[i B:(i + 1) B], the last
  batch's missing ones repeating the final label.

  Yields:
    (i, float32 samples [batch_size, *example_shape] on the host, network evaluations per sample).
  """
  sample_fn = make_sample_fn(
    model,
    kind,
    sched,
    (batch_size, *example_shape),
    mesh,
    spec,
    guidance_scale=guidance_scale,
    classifier=classifier,
    classifier_scale=classifier_scale,
  )
  for i in batch_indices:
    batch_labels = None
    if labels is not None:
      batch_labels = np.asarray(labels[i * batch_size : (i + 1) * batch_size], np.int32)
      batch_labels = np.pad(batch_labels, (0, batch_size - len(batch_labels)), mode="edge")
    x0, nfe = sample_fn(params, jax.random.fold_in(key, i), batch_labels)
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
  labels: np.ndarray | None = None,
  guidance_scale: float = 0.0,
  classifier: tuple[nn.Module, dict] | None = None,
  classifier_scale: float = 1.0,
) -> tuple[np.ndarray, float]:
  """Draws num_samples samples in batches; batch i uses fold_in(key, i).

  The batch size is rounded up to a multiple of the device count; extra samples are dropped.
  A conditional model draws sample j of class labels[j] (int [num_samples]), with
  classifier-free guidance of scale guidance_scale; a classifier (module, params) adds classifier
  guidance of scale classifier_scale towards the labels (any model).

  Returns:
    (float32 [num_samples, *example_shape] on the host, mean network evaluations per sample).
  """
  batch_size = device_batch_size(batch_size, num_samples, mesh)
  num_batches = -(-num_samples // batch_size)
  if labels is not None and len(labels) != num_samples:
    raise ValueError(f"got {len(labels)} labels for {num_samples} samples; give one per sample")
  batches = sample_batches(
    model,
    kind,
    params,
    sched,
    example_shape,
    batch_size,
    key,
    mesh,
    spec,
    range(num_batches),
    labels=labels,
    guidance_scale=guidance_scale,
    classifier=classifier,
    classifier_scale=classifier_scale,
  )
  bar = tqdm.tqdm(
    batches, total=num_batches, desc="sampling", unit="batch", disable=not progress, leave=False
  )
  out, nfes = [], []
  for _, x0, nfe in bar:
    out.append(x0)
    nfes.append(nfe)
  return np.concatenate(out)[:num_samples], float(np.mean(nfes))
