"""The frozen autoencoder of a latent diffusion run (Rombach et al. 2022, sec. 3.2): images to
scaled latents z = scale * mean of q(z|x), latents back to images D(z / scale), and the scale,
1/std of the data's latents (LDM's scale_by_std, appendix G), chosen once and recorded in the run.

The diffusion model trains on the posterior mean, not a sample of q(z|x): with LDM's beta of 1e-6
the posterior's std is far below the latents' spread, and the mean keeps each batch a function of
(seed, step) alone, as the image pipeline's batches are.
"""

import dataclasses
import functools
import os

import jax
import ml_collections
import numpy as np

from diffusion_jax import data, models
from diffusion_jax.training import autoencoder_run, run_config, step

# The run's first training batches whose latents' std sets the scale (LDM: the first batch).
SCALE_BATCHES = 8


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  """A frozen autoencoder and the scale of its latents for diffusion."""

  vae: models.AutoencoderKL
  params: dict
  scale: float

  def encode(self, x_BxHxWxC: jax.Array) -> jax.Array:
    """scale * the posterior mean of q(z|x), [B, H/f, W/f, c]; traceable. A jitted caller holds
    the params as constants of its program."""
    return self.latents_of_images(self.params, x_BxHxWxC)

  def latents_of_images(
    self, params: dict, x_BxHxWxC: jax.Array, flip_B: jax.Array | None = None
  ) -> jax.Array:
    """encode with the autoencoder's params as an argument, the images where flip_B is true
    mirrored first (`step.make_train_steps`' latents_of)."""
    if flip_B is not None:
      x_BxHxWxC = step.flipped(x_BxHxWxC, flip_B)
    return self.scale * posterior_mean(self.vae, params, x_BxHxWxC)

  def encode_batches(self, x_NxHxWxC: np.ndarray, batch_size: int) -> np.ndarray:
    """Scaled latents of the host's images, batch_size at a time; float32 [N, H/f, W/f, c]."""
    return in_batches(self.encode, x_NxHxWxC, batch_size)

  def decode_batches(self, z_Nxhxwxc: np.ndarray, batch_size: int) -> np.ndarray:
    """Images D(z / scale) of the host's latents, batch_size at a time; float32 [N, H, W, C]."""
    return in_batches(
      lambda z: decoded(self.vae, self.params, z / self.scale), z_Nxhxwxc, batch_size
    )

  def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The latent of an (H, W, C) image: (H / f, W / f, latent_channels)."""
    f = self.vae.factor
    return (image_shape[0] // f, image_shape[1] // f, self.vae.latent_channels)


def in_batches(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
  """fn of x, batch_size examples at a time (all of x when fewer), on the host as float32; the last
  batch is padded to the others' size, so that one compiled program serves every batch."""
  size = min(batch_size, len(x))
  outputs = []
  for start in range(0, len(x), size):
    batch = x[start : start + size]
    padded = np.concatenate([batch, np.repeat(batch[-1:], size - len(batch), axis=0)])
    outputs.append(np.asarray(fn(padded), np.float32)[: len(batch)])
  return np.concatenate(outputs)


@functools.partial(jax.jit, static_argnums=0)
def posterior_mean(vae: models.AutoencoderKL, params: dict, x_BxHxWxC: jax.Array) -> jax.Array:
  """The mean of q(z|x), [B, H/f, W/f, c]."""
  mean, _ = vae.apply({"params": params}, x_BxHxWxC, method="encode")
  return mean


@functools.partial(jax.jit, static_argnums=0)
def decoded(vae: models.AutoencoderKL, params: dict, z_Bxhxwxc: jax.Array) -> jax.Array:
  """The decoder's images D(z), [B, h f, w f, C]."""
  return vae.apply({"params": params}, z_Bxhxwxc, method="decode")


def frozen_autoencoder(
  config: ml_collections.ConfigDict, mesh=None
) -> tuple[models.AutoencoderKL, dict, float]:
  """The (autoencoder, EMA params, released latent scale or 0) of config.data.autoencoder_run,
  checked against config.data's images.

  Raises:
    ValueError: one line: the run is missing or not an autoencoder, or the images' channels or size
      do not fit it.
  """
  workdir = config.data.autoencoder_run
  if not os.path.isfile(os.path.join(workdir, run_config.CONFIG_FILENAME)):
    raise ValueError(
      f"data.autoencoder_run {workdir!r} holds no autoencoder run (no config.json); train one with "
      "an autoencoder_kl config or convert one with convert_diffusers.py --autoencoder"
    )
  if run_config.load_config(workdir).model.name != "autoencoder_kl":
    raise ValueError(f"data.autoencoder_run {workdir} is not an autoencoder run (autoencoder_kl)")
  vae, params, ae_config = autoencoder_run.load_autoencoder(workdir, mesh=mesh)
  if config.data.num_channels != vae.image_channels:
    raise ValueError(
      f"data.num_channels {config.data.num_channels} does not match the autoencoder's "
      f"{vae.image_channels} image channels ({workdir})"
    )
  if config.data.image_size % vae.factor:
    raise ValueError(
      f"data.image_size {config.data.image_size} is not a multiple of the autoencoder's "
      f"downsampling factor {vae.factor} ({workdir})"
    )
  return vae, params, ae_config.model.latent_scale


def data_scale(vae: models.AutoencoderKL, params: dict, batches) -> float:
  """1 / std of the posterior means of the images in `batches` (float32 [B, H, W, C] each), over
  every element, accumulated in float64 (LDM's scale_by_std)."""
  count, total, squares = 0, 0.0, 0.0
  for x in batches:
    z = np.asarray(posterior_mean(vae, params, x), np.float64)
    count, total, squares = count + z.size, total + z.sum(), squares + np.square(z).sum()
  mean = total / count
  return float(1.0 / np.sqrt(squares / count - mean**2))


def run_scale(
  config: ml_collections.ConfigDict,
  workdir: str,
  released: float,
  compute,
) -> float:
  """The run's latent scale: config.data.latent_scale when given, else the one the run recorded
  when it started, else the autoencoder's released one, else compute() (once, at the start)."""
  if config.data.latent_scale:
    return config.data.latent_scale
  if os.path.isfile(os.path.join(workdir, run_config.CONFIG_FILENAME)):
    recorded = run_config.load_config(workdir).data.latent_scale
    if recorded:
      return recorded
  return released or compute()


def open_for_training(
  config: ml_collections.ConfigDict, workdir: str, mesh
) -> tuple[LatentSpace, ml_collections.ConfigDict]:
  """The latent space a run trains in, and config with its data.latent_scale recorded (and
  sampling.clip_x0 False unless set); the scale is computed from the first SCALE_BATCHES global
  training batches when it is not set."""
  vae, params, released = frozen_autoencoder(config, mesh)

  def compute():
    whole = data.create_dataset(
      config.data, config.training.batch_size, config.seed, process_index=0, process_count=1
    )
    return data_scale(vae, params, (whole.get_batch(b) for b in range(SCALE_BATCHES)))

  scale = run_scale(config, workdir, released, compute)
  config = config.copy_and_resolve_references()
  config.data.latent_scale = scale
  if config.sampling.clip_x0 is None:  # the default clips images to [-1, 1]; latents are not
    config.sampling.clip_x0 = False
  return LatentSpace(vae, params, scale), config


def open_for_sampling(config: ml_collections.ConfigDict, mesh=None) -> LatentSpace:
  """The latent space a recorded run trained in, with its recorded scale."""
  vae, params, _ = frozen_autoencoder(config, mesh)
  if not config.data.latent_scale:
    raise ValueError("the run records no data.latent_scale; it never started training")
  return LatentSpace(vae, params, config.data.latent_scale)
