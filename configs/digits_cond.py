"""Class-conditional digits with classifier-free guidance (Ho & Salimans 2022): configs/digits.py
with the digit as label and 10% of labels dropped to the null class while training.

python train.py --config=configs/digits_cond.py --workdir=runs/digits_cond
python sample.py --workdir=runs/digits_cond --per_class=8 --guidance=1
"""

from diffusion_jax.configs import digits


def get_config():
  config = digits.get_config()
  config.model.num_classes = 10
  config.training.label_dropout = 0.1
  config.sampling.guidance = 1.0  # previews and sample.py's default; --guidance=w overrides
  return config
