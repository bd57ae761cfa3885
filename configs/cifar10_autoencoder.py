"""Latent diffusion's KL autoencoder for CIFAR-10 32x32 at f = 2 (ch 128, ch_mult (1, 2), 2 blocks,
4 latent channels): 16x16x4 latents. At 32x32 a factor of 4 would leave 8x8 latents too coarse for
the images' detail. For GPUs; not trained or measured here.

python train.py --config=configs/cifar10_autoencoder.py --workdir=runs/cifar10_autoencoder
"""

from diffusion_jax.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.model.update(
    name="autoencoder_kl", ch=128, ch_mult=(1, 2), num_res_blocks=2, latent_channels=4
  )
  # The autoencoder trains on whole batches, with LDM's l1 + 1e-6 KL (no perceptual term).
  config.training.update(
    batch_size=128,
    grad_accum_steps=1,
    num_train_steps=100_000,
    ema_decay=0.999,
    checkpoint_every=10_000,
    sample_every=10_000,
    num_sample_images=64,
    reconstruction_loss="l1",
    kl_weight=1e-6,
  )
  config.optim.learning_rate = 4.5e-6 * 128  # LDM's base rate times the batch size
  config.eval.every_steps = 0  # the diffusion run's quick evaluation draws samples; none here
  return config
