"""Latent diffusion's KL autoencoder on scikit-learn's digits upsampled to 16x16, f = 4: 4x4x3
latents (offline; minutes on a 2-core CPU).

python train.py --config=configs/digits_autoencoder.py --workdir=runs/digits_autoencoder
"""

from diffusion_jax.configs import digits


def get_config():
  config = digits.get_config()
  config.data.image_size = 16

  config.model.name = "autoencoder_kl"
  config.model.ch = 16
  config.model.ch_mult = (1, 2, 2)  # f = 4: 16x16 images, 4x4 latents
  config.model.num_res_blocks = 1
  config.model.num_groups = 8
  config.model.latent_channels = 3

  config.training.grad_accum_steps = 1  # the autoencoder trains on whole batches
  config.training.num_train_steps = 3000
  config.training.ema_decay = 0.99
  config.training.checkpoint_every = 1000
  config.training.sample_every = 1000
  config.training.num_sample_images = 32
  config.training.reconstruction_loss = "l1"
  config.training.kl_weight = 1e-6  # LDM's

  config.eval.every_steps = 0  # the diffusion run's quick evaluation draws samples; none here
  return config
