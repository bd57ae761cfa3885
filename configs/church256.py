"""LSUN church 256x256 (tfds `lsun/church_outdoor`), the DDPM paper's LSUN model and recipe.

python train.py --config=configs/church256.py --workdir=runs/church256
"""

from diffusion_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "lsun/church_outdoor"
  config.data.image_size = 256
  config.data.center_crop = True

  config.model.ch_mult = (1, 1, 2, 2, 4, 4)
  config.model.dropout = 0.0

  config.training.batch_size = 64
  config.training.num_train_steps = 1_200_000
  config.training.checkpoint_every = 20_000
  config.training.sample_every = 20_000
  config.training.num_sample_images = 16
  config.optim.learning_rate = 2e-5  # the paper's rate for its 256x256 models
  config.sampling.batch_size = 16
  return config
