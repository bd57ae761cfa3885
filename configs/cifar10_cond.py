"""Class-conditional CIFAR-10: the DDPM recipe with tfds's `label` as the class and 10% label
dropout for classifier-free guidance.

python train.py --config=configs/cifar10_cond.py --workdir=runs/cifar10_cond
python sample.py --workdir=runs/cifar10_cond --per_class=10 --guidance=1
"""

from diffusion_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.label_feature = "label"
  config.model.num_classes = 10
  config.training.label_dropout = 0.1
  config.sampling.guidance = 1.0
  return config
