"""CelebA 64x64 (tfds `celeb_a`, central crop), the CIFAR-10 recipe with one more level.

python train.py --config=configs/celeba64.py --workdir=runs/celeba64
"""

from diffusion_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "celeb_a"
  config.data.image_size = 64
  config.data.center_crop = True  # 178x218 faces -> central 178x178 square -> 64x64

  config.model.ch_mult = (1, 2, 2, 2, 4)
  config.training.num_train_steps = 500_000
  config.sampling.batch_size = 128
  return config
