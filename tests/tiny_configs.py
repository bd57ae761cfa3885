"""Small versions of the shipped configs, fast enough for a 2-core CPU."""

from diffusion_jax.configs import digits, digits_autoencoder, toy2d


def toy(num_train_steps: int = 40):
  """toy2d (moons, MLP) with a short run and frequent checkpoints."""
  config = toy2d.get_config()
  config.model.hidden_dim = 32
  config.training.batch_size = 64
  config.training.num_train_steps = num_train_steps
  config.training.log_every = 5
  config.training.checkpoint_every = 10
  config.training.sample_every = 20
  config.training.num_sample_images = 64
  config.sampling.batch_size = 64
  config.data.num_points = 512
  return config


def digits_small(num_train_steps: int = 4):
  """digits at 8x8 with a two-level U-Net of width 8 and a 20-step chain."""
  config = digits.get_config()
  config.data.image_size = 8
  config.model.ch = 8
  config.model.ch_mult = (1, 2)
  config.model.attn_resolutions = (4,)
  config.model.num_groups = 4
  config.diffusion.num_timesteps = 20
  config.training.batch_size = 8
  config.training.grad_accum_steps = 1  # one program per step: quicker to compile
  config.training.num_train_steps = num_train_steps
  config.training.log_every = 2
  config.training.checkpoint_every = 2
  config.training.sample_every = num_train_steps
  config.training.num_sample_images = 8
  config.sampling.batch_size = 8
  config.sampling.steps = 10  # DDIM, as configs/digits.py samples, on the 20-step chain
  config.eval.every_steps = 0  # tests that want the quick evaluation turn it on
  return config


def autoencoder_small():
  """digits_autoencoder for 8x8 digits: f = 2, 4x4x2 latents, width 4."""
  config = digits_autoencoder.get_config()
  config.data.image_size = 8
  config.model.update(ch=4, ch_mult=(1, 2), num_groups=2, latent_channels=2, mid_attention=False)
  return config


def digits_latent(autoencoder_run: str, num_train_steps: int = 2):
  """digits_small on the latents of `autoencoder_run` with a one-level U-Net, no previews, a
  checkpoint a step, and 2 DDIM steps to sample."""
  config = digits_small(num_train_steps)
  config.data.autoencoder_run = autoencoder_run
  config.model.update(ch_mult=(1,), attn_resolutions=())
  config.training.update(log_every=1, checkpoint_every=1, sample_every=0)
  config.sampling.steps = 2
  return config
