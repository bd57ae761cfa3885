"""Latent diffusion on CIFAR-10: configs/cifar10.py's DDPM on the 16x16x4 latents of a
configs/cifar10_autoencoder.py run (f = 2), encoded once into a latent cache beside the run.
For GPUs; not trained or measured here.

python train.py --config=configs/cifar10_autoencoder.py --workdir=runs/cifar10_autoencoder
python train.py --config=configs/cifar10_latent.py --workdir=runs/cifar10_latent
python sample.py --workdir=runs/cifar10_latent
"""

from diffusion_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.data.autoencoder_run = "runs/cifar10_autoencoder"
  # 50,000 images and their mirrors encoded once: 2 x 4 KiB each, 400 MB.
  config.data.latent_cache = "runs/cifar10_latent_cache"
  # The CIFAR-10 U-Net on the 16x16 latents: levels 16, 8, 4, attention at 8x8.
  config.model.ch_mult = (1, 2, 2)
  config.model.attn_resolutions = (8,)
  return config
