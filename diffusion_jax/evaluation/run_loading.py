"""Load a trained run (config, model, schedule, params, and a latent run's autoencoder) from a
train.py workdir."""

import dataclasses

import ml_collections
import numpy as np
from flax import linen as nn

from diffusion_jax import data, models, parametrization, schedules, sharding
from diffusion_jax.schedules import Schedule
from diffusion_jax.training import checkpoints, config_checks, latent_space, run_config
from diffusion_jax.training import state as train_state


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  model: nn.Module
  sched: Schedule
  params: dict
  step: int
  example_shape: tuple[int, ...]  # what the model draws: the data's, or a latent run's latents'
  data_shape: tuple[int, ...]  # the data's examples: a latent run's images, else example_shape
  class_names: tuple[str, ...] = ()  # a conditional run's classes (label k is class_names[k])
  latents: latent_space.LatentSpace | None = None  # a latent diffusion run's autoencoder

  def to_images(self, samples: np.ndarray) -> np.ndarray:
    """The model's samples as images: decoded by a latent run's autoencoder, else as they are."""
    if self.latents is None:
      return samples
    return self.latents.decode_batches(samples, self.config.sampling.batch_size)

  def to_examples(self, x: np.ndarray) -> np.ndarray:
    """Data [N, *data_shape] as the model's examples: a latent run's scaled latents, else as they
    are."""
    if self.latents is None:
      return x
    return self.latents.encode_batches(x, self.config.sampling.batch_size)

  @property
  def num_classes(self) -> int:
    """The model's classes; 0 for an unconditional run."""
    return models.num_classes_of(self.model)

  @property
  def kind(self) -> parametrization.Parametrization:
    """What the run's network predicts."""
    return models.parametrization_of(self.config.model)

  def denoiser(self) -> parametrization.Denoiser:
    """The network with the loaded params, in inference mode: what samplers and likelihoods take."""
    return models.denoiser(self.model, self.params, self.kind)


def example_shape_for(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The per-example shape the config trains on, without opening the dataset."""
  if config.data.source == "builtin" and config.data.name != "digits":
    # 2D toys are generated in memory, which is cheap.
    return data.create_dataset(
      config.data, 1, config.seed, process_index=0, process_count=1
    ).example_shape
  size = config.data.image_size
  return (size, size, config.data.num_channels)


# Why bits/dim refuse a latent run: its model is a density of continuous latents.
LATENT_BITS = "bits/dim of its latents are no likelihood of the images"


def refuse_latent_run(run: LoadedRun, what: str, why: str) -> None:
  """Refuses a latent diffusion run for `what`, a measure of the images that a model of latents
  does not give; `why` says why."""
  if run.latents is not None:
    raise ValueError(f"{what} does not take a latent diffusion run (data.autoencoder_run): {why}")


def load_run(workdir: str, step: int | None = None, use_ema: bool = True, mesh=None) -> LoadedRun:
  """Restores workdir's config and the chosen checkpoint (default latest); EMA params by default."""
  config = run_config.load_config(workdir)
  config_checks.check_config(config)
  model = models.create_model(config)
  mesh = mesh or sharding.data_mesh()
  data_shape = shape = example_shape_for(config)
  latents = None
  if config.data.autoencoder_run:
    latents = latent_space.open_for_sampling(config, mesh)
    shape = latents.latent_shape(data_shape)
  # Read-only: the run may be training right now, and its trainer owns the directory.
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    state = ckpt.restore(train_state.abstract_train_state(config, model, shape, mesh), step)
  finally:
    ckpt.close()
  return LoadedRun(
    config=config,
    model=model,
    sched=schedules.schedule_from_config(config.diffusion),
    params=state.ema_params if use_ema else state.params,
    step=int(state.step),
    example_shape=shape,
    data_shape=data_shape,
    class_names=run_config.load_class_names(workdir),
    latents=latents,
  )
