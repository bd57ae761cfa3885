"""A noisy-digits classifier p(y | x_t, t) for classifier guidance of digits runs (the U-Net's
down path and a pooled head; the diffusion schedule must be the guided run's).

python train_classifier.py --config=configs/digits_classifier.py --workdir=runs/digits_classifier
python sample.py --workdir=runs/digits --classifier=runs/digits_classifier --per_class=8
"""

from diffusion_jax.configs import digits


def get_config():
  config = digits.get_config()
  config.model.num_classes = 10
  config.model.attn_resolutions = ()
  config.training.num_train_steps = 3000
  config.training.checkpoint_every = 1000
  config.training.ema_decay = 0.99
  return config
