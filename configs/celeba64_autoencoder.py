"""Latent diffusion's KL autoencoder for CelebA 64x64, LDM's KL-f4 layout (ch 128, ch_mult
(1, 2, 4), 2 blocks, 3 latent channels): 16x16x3 latents. For GPUs; not trained or measured here.

python train.py --config=configs/celeba64_autoencoder.py --workdir=runs/celeba64_autoencoder
"""

from diffusion_jax.configs import celeba64


def get_config():
  config = celeba64.get_config()
  # f = 4 (64x64 images, 16x16 latents); LDM's KL-f4: 2 blocks per level, 3 latent channels.
  config.model.update(
    name="autoencoder_kl", ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, latent_channels=3
  )
  # The autoencoder trains on whole batches, with LDM's l1 + 1e-6 KL (no perceptual term).
  config.training.update(
    batch_size=64,
    grad_accum_steps=1,
    num_train_steps=100_000,
    ema_decay=0.999,
    checkpoint_every=10_000,
    sample_every=10_000,
    num_sample_images=32,
    reconstruction_loss="l1",
    kl_weight=1e-6,
  )
  config.optim.learning_rate = 4.5e-6 * 64  # LDM's base rate times the batch size
  config.eval.every_steps = 0  # the diffusion run's quick evaluation draws samples; none here
  return config
