"""Latent diffusion's KL autoencoder for CelebA 64x64, LDM's KL-f4 layout (ch 128, ch_mult
(1, 2, 4), 2 blocks, 3 latent channels): 16x16x3 latents. For GPUs; not trained or measured here.

python train.py --config=configs/celeba64_autoencoder.py --workdir=runs/celeba64_autoencoder
"""

from diffusion_jax.configs import celeba64


def get_config():
  config = celeba64.get_config()

  config.model.name = "autoencoder_kl"
  config.model.ch = 128
  config.model.ch_mult = (1, 2, 4)  # f = 4: 64x64 images, 16x16 latents
  config.model.num_res_blocks = 2
  config.model.latent_channels = 3

  config.training.batch_size = 64
  config.training.grad_accum_steps = 1  # the autoencoder trains on whole batches
  config.training.num_train_steps = 100_000
  config.training.ema_decay = 0.999
  config.training.checkpoint_every = 10_000
  config.training.sample_every = 10_000
  config.training.num_sample_images = 32
  config.training.reconstruction_loss = "l1"
  config.training.kl_weight = 1e-6  # LDM's

  config.optim.learning_rate = 4.5e-6 * 64  # LDM's base rate times the batch size
  config.eval.every_steps = 0  # the diffusion run's quick evaluation draws samples; none here
  return config
