"""CIFAR-10 32x32, the DDPM paper's recipe (35.7M-parameter U-Net, 800k steps).

python train.py --config=configs/cifar10.py --workdir=runs/cifar10
"""

from diffusion_jax.configs import default


def get_config():
  return default.get_config()
