"""Latent diffusion on scikit-learn's digits at 16x16: configs/digits.py's DDPM on the 4x4x3
latents of a configs/digits_autoencoder.py run (f = 4), decoded to images for previews, sampling
and the quick FID (offline; minutes on a 2-core CPU).

python train.py --config=configs/digits_autoencoder.py --workdir=runs/digits_autoencoder
python train.py --config=configs/digits_latent.py --workdir=runs/digits_latent
python sample.py --workdir=runs/digits_latent
"""

from diffusion_jax.configs import digits


def get_config():
  config = digits.get_config()
  config.data.image_size = 16  # the autoencoder's images
  config.data.autoencoder_run = "runs/digits_autoencoder"
  config.model.attn_resolutions = (2,)  # the U-Net's levels are 4x4 and 2x2 latents
  return config
