"""Latent diffusion on CelebA 64x64: configs/celeba64.py's DDPM on the 16x16x3 latents of a
configs/celeba64_autoencoder.py run (f = 4), encoded once into a latent cache. For GPUs; not
trained or measured here.

python train.py --config=configs/celeba64_autoencoder.py --workdir=runs/celeba64_autoencoder
python train.py --config=configs/celeba64_latent.py --workdir=runs/celeba64_latent
python sample.py --workdir=runs/celeba64_latent
"""

from diffusion_jax.configs import celeba64


def get_config():
  config = celeba64.get_config()
  config.data.autoencoder_run = "runs/celeba64_autoencoder"
  # 162,770 faces and their mirrors encoded once: 2 x 3 KiB each, 1 GB.
  config.data.latent_cache = "runs/celeba64_latent_cache"
  # The CIFAR-10 U-Net on the 16x16 latents: levels 16, 8, 4, 2, attention at 8x8.
  config.model.ch_mult = (1, 2, 2, 2)
  config.model.attn_resolutions = (8,)
  config.training.num_train_steps = 200_000
  return config
