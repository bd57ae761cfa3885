"""Latent diffusion's KL autoencoder for CelebA 64x64, LDM's KL-f4 layout (ch 128, ch_mult
(1, 2, 4), 2 blocks, 3 latent channels): 16x16x3 latents. For GPUs; not trained or measured here.

python train.py --config=configs/celeba64_autoencoder.py --workdir=runs/celeba64_autoencoder
"""

from diffusion_jax.configs import celeba64, default


def get_config():
  config = celeba64.get_config()
  # f = 4 (64x64 images, 16x16 latents); LDM's KL-f4: 2 blocks per level, 3 latent channels.
  config.model.update(
    name="autoencoder_kl", ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, latent_channels=3
  )
  default.ldm_autoencoder_training(config, batch_size=64)
  return config
