"""Latent diffusion's KL autoencoder for CIFAR-10 32x32 at f = 2 (ch 128, ch_mult (1, 2), 2 blocks,
4 latent channels): 16x16x4 latents. At 32x32 a factor of 4 would leave 8x8 latents too coarse for
the images' detail. For GPUs; not trained or measured here.

python train.py --config=configs/cifar10_autoencoder.py --workdir=runs/cifar10_autoencoder
"""

from diffusion_jax.configs import cifar10, default


def get_config():
  config = cifar10.get_config()
  config.model.update(
    name="autoencoder_kl", ch=128, ch_mult=(1, 2), num_res_blocks=2, latent_channels=4
  )
  default.ldm_autoencoder_training(config, batch_size=128)
  return config
