"""Training latent diffusion's KL autoencoder (`models.AutoencoderKL`) on images with LDM's
objective minus its perceptual and adversarial terms (`latents.autoencoder_loss`), in the
diffusion trainer's loop (`loop.run_training`): sharded batches, the EMA, exact resume,
checkpoints, progress, metrics, and previews of reconstructions.

train.py runs it for a config whose model is an autoencoder_kl. An autoencoder run is a workdir
like a diffusion run's (config.json, checkpoints/, metrics.jsonl, previews/);
`autoencoder_run.load_autoencoder` opens it.
"""

import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from diffusion_jax import data, images, latents, models, sharding
from diffusion_jax.training import autoencoder_run, loop, metric_writer
from diffusion_jax.training import state as train_state
from diffusion_jax.training.step import apply_update, flip_images, jit_steps


def autoencoder_step(
  state: train_state.TrainState,
  x0: jax.Array,
  key: jax.Array,
  *,
  vae: models.AutoencoderKL,
  reconstruction: str,
  kl_weight: float,
  ema_decay: float,
  random_flip: bool = False,
  lr_schedule: optax.Schedule | None = None,
  noise_sharding=None,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One step of the autoencoder's objective with z ~ q(z|x) reparameterized, plus the EMA
  update; every draw comes from fold_in(key, state.step).

  Args:
    state: the replicated train state.
    x0: [B, H, W, C] images in [-1, 1], split over devices.
    key: the run's training key.
    vae: the autoencoder.
    reconstruction, kl_weight: the objective (`latents.autoencoder_loss`).
    ema_decay: decay of the parameters' moving average (0: the EMA is the parameters).
    random_flip: flip images horizontally with probability 1/2.
    lr_schedule: the learning rate by step, for the logged metrics.
    noise_sharding: the batch's sharding, for eps.

  Returns:
    (new state, metrics): scalar `loss`, `reconstruction` (the error per pixel), `kl` (nats per
    image), `grad_norm` and, with lr_schedule, `lr`.
  """
  flip_key, eps_key = jax.random.split(jax.random.fold_in(key, state.step))
  if random_flip:
    x0 = flip_images(x0, flip_key)
  B, H, W, _ = x0.shape
  eps = jax.random.normal(eps_key, (B, H // vae.factor, W // vae.factor, vae.latent_channels))
  if noise_sharding is not None:
    eps = jax.lax.with_sharding_constraint(eps, noise_sharding)

  def loss_fn(params):
    mean, logvar = vae.apply({"params": params}, x0, method="encode")
    x_rec = vae.apply({"params": params}, latents.sample(mean, logvar, eps), method="decode")
    loss_B, rec_B, kl_B = latents.autoencoder_loss(
      x0, x_rec, mean, logvar, reconstruction=reconstruction, kl_weight=kl_weight
    )
    return jnp.mean(loss_B), (jnp.mean(rec_B) / (x0.size // B), jnp.mean(kl_B))

  (loss, (rec, kl)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state, metrics = apply_update(state, grads, ema_decay, lr_schedule)
  return new_state, {"loss": loss, "reconstruction": rec, "kl": kl, **metrics}


def train_autoencoder(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains (or resumes) the autoencoder config.model describes on config.data's images.

  Reads config.data, config.model (autoencoder_kl), training.batch_size / num_train_steps /
  steps_per_call / ema_decay / reconstruction_loss / kl_weight / log_every / checkpoint_every /
  keep_checkpoints / sample_every / num_sample_images, and config.optim.

  Raises:
    ValueError: one line naming what to change in the config, or a workdir taken by another run.
  """
  train = lambda config: _train(config, workdir)
  return loop.train_in_workdir(config, workdir, "train.py", train)


def _train(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  vae = models.create_autoencoder(config)
  training = config.training
  if training.grad_accum_steps != 1:
    raise ValueError("the autoencoder trains on whole batches; set training.grad_accum_steps=1")
  if config.data.image_size % vae.factor:
    raise ValueError(
      f"data.image_size {config.data.image_size} is not a multiple of the autoencoder's "
      f"downsampling factor {vae.factor} (2^(len(model.ch_mult) - 1))"
    )
  mesh = sharding.data_mesh()
  sharding.check_batch_size(training.batch_size, mesh, "training.batch_size")
  ds = data.create_dataset(config.data, training.batch_size, config.seed)
  if not ds.is_image:
    raise ValueError("the autoencoder takes images; 2D toy data has none")
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  reconstruct = jax.jit(
    lambda params, x: vae.apply({"params": params}, x), out_shardings=sharding.replicated(mesh)
  )
  step = functools.partial(
    autoencoder_step,
    vae=vae,
    reconstruction=training.reconstruction_loss,
    kl_weight=training.kl_weight,
    ema_decay=training.ema_decay,
    random_flip=config.data.random_flip,
    lr_schedule=train_state.learning_rate_schedule(config.optim),
    noise_sharding=sharding.batch_sharding(mesh),
  )
  return loop.run_training(
    config,
    workdir,
    ds,
    mesh,
    make_state=lambda k: autoencoder_run.create_state(config, vae, k),
    train_steps=jit_steps(step, mesh),
    init_key=init_key,
    train_key=train_key,
    preview=functools.partial(_write_reconstructions, config, workdir, reconstruct),
  )


def _write_reconstructions(
  config: ml_collections.ConfigDict,
  workdir: str,
  reconstruct: Callable[[dict, np.ndarray], jax.Array],
  writer: metric_writer.MetricWriter,
  state: train_state.TrainState,
  step: int,
) -> None:
  """Writes previews/step_<N>.png: the first training.num_sample_images images of the data, each
  followed by its reconstruction(EMA params, images) through the posterior mean."""
  # The first images of all the data, the same on every process.
  whole = data.create_dataset(config.data, 1, config.seed, process_index=0, process_count=1)
  x = whole.data_samples(min(config.training.num_sample_images, whole.num_examples))
  x_rec = np.asarray(reconstruct(state.ema_params, x))
  if jax.process_index() != 0:
    return
  pairs = np.stack([x, x_rec], axis=1).reshape(-1, *x.shape[1:])
  path = os.path.join(workdir, "previews", f"step_{step:07d}.png")
  writer.write_images(step, {"reconstructions": images.save_preview(path, pairs, ncols=8)})
