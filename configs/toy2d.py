"""2D toy data (moons by default) with an MLP denoiser; trains in under a minute on a CPU.

python train.py --config=configs/toy2d.py --workdir=runs/toy2d
python train.py --config=configs/toy2d.py --workdir=runs/swiss --config.data.name=swiss_roll
"""

from diffusion_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.source = "builtin"
  config.data.name = "moons"  # moons | swiss_roll | s_curve | gaussian_mixture
  config.data.random_flip = False

  config.model.name = "mlp"
  config.model.hidden_dim = 128
  config.model.num_layers = 3
  config.model.dropout = 0.0

  # The 2D tutorial's sigmoid ramp over 100 steps, raised to end at 0.1 so that alpha-bar_T is
  # 0.005 and x_T really is N(0, I) (the tutorial's 1e-5..5e-3 stops at alpha-bar_T = 0.78).
  config.diffusion.schedule = "sigmoid"
  config.diffusion.num_timesteps = 100
  config.diffusion.beta_start = 1e-4
  config.diffusion.beta_end = 0.1

  config.training.batch_size = 128
  config.training.num_train_steps = 10_000
  config.training.ema_decay = 0.99
  config.training.log_every = 500
  config.training.checkpoint_every = 5000
  config.training.sample_every = 5000
  config.training.num_sample_images = 1000

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100

  config.sampling.clip_x0 = False  # 2D data is not confined to [-1, 1]
  config.sampling.batch_size = 1000
  return config
