"""An autoencoder run: a workdir whose config.model is an autoencoder_kl (`models.AutoencoderKL`)
and whose checkpoints hold its train state; convert_diffusers.py --autoencoder writes one from
released weights (`imported_run.write_run`)."""

import jax
import jax.numpy as jnp
import ml_collections

from diffusion_jax import models, sharding
from diffusion_jax.training import checkpoints, config_checks, run_config
from diffusion_jax.training import state as train_state


def create_state(
  config: ml_collections.ConfigDict, vae: models.AutoencoderKL, key: jax.Array
) -> train_state.TrainState:
  """A fresh train state of the autoencoder, with the optimizer of config.optim."""
  x = jnp.zeros((1, vae.factor, vae.factor, vae.image_channels), jnp.float32)
  params = vae.init(key, x)["params"]
  return train_state.state_from_params(vae, params, train_state.make_optimizer(config.optim))


def load_autoencoder(
  workdir: str, step: int | None = None, use_ema: bool = True, mesh=None
) -> tuple[models.AutoencoderKL, dict, ml_collections.ConfigDict]:
  """An autoencoder run's (autoencoder, params, config), read-only.

  Args:
    workdir: the run's directory.
    step: the checkpoint to read (default: the latest).
    use_ema: the EMA params (default) or the raw ones.
    mesh: where the params go, replicated (default: all devices).

  Raises:
    ValueError: the run's model is not an autoencoder, or its config or checkpoint is unreadable.
  """
  config = run_config.load_config(workdir)
  config_checks.check_config(config)
  vae = models.create_autoencoder(config)
  abstract = train_state.abstract_state(
    lambda k: create_state(config, vae, k), mesh or sharding.data_mesh()
  )
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    state = ckpt.restore(abstract, step)
  finally:
    ckpt.close()
  return vae, state.ema_params if use_ema else state.params, config
