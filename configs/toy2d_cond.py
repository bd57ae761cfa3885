"""Class-conditional 2D toy: the 8-Gaussian ring with each point's component as its label, an MLP
with a label embedding, classifier-free guidance.

python train.py --config=configs/toy2d_cond.py --workdir=runs/toy2d_cond
python sample.py --workdir=runs/toy2d_cond --labels=0,0,0,4,4,4 --guidance=2
"""

from diffusion_jax.configs import toy2d


def get_config():
  config = toy2d.get_config()
  config.data.name = "gaussian_mixture"
  config.model.num_classes = 8
  config.training.label_dropout = 0.1
  config.sampling.guidance = 1.0
  return config
