"""scikit-learn's 8x8 handwritten digits (offline); recognisable digits on a 2-core CPU.

python train.py --config=configs/digits.py --workdir=runs/digits
python sample.py --workdir=runs/digits
"""

from diffusion_jax.configs import default


def get_config():
  config = default.get_config()
  config.data.source = "builtin"
  config.data.name = "digits"
  config.data.image_size = 8  # the digits' native size; 16 costs 4x the compute for no new detail
  config.data.num_channels = 1
  config.data.random_flip = False  # digits are not mirror-symmetric

  config.model.ch = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  config.model.dropout = 0.0
  config.model.num_groups = 8

  # On a CPU with 2 or more cores train.py splits the batch over two CPU devices (--cpu_devices),
  # 26-30 steps/s on 2 cores against 22 for one device with two micro-batches of 32, the best
  # on one device (benchmarks/RESULTS.md).
  config.training.batch_size = 64
  config.training.num_train_steps = 6000
  config.training.ema_decay = 0.995
  config.training.log_every = 100
  config.training.checkpoint_every = 1000
  config.training.sample_every = 1000
  config.training.num_sample_images = 64

  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200

  # DDIM, 50 steps: previews and sample.py in a second instead of 1000 network calls per image,
  # at a lower FID than the full ancestral chain on these digits (benchmarks/RESULTS.md).
  config.sampling.sampler = "ddim"
  config.sampling.steps = 50

  # FID / IS / KID from a small digits classifier's features, logged while training.
  config.eval.feature_net = "digits"
  config.eval.every_steps = 2000
  config.eval.num_samples = 1000
  config.eval.sampler = "ddim"
  config.eval.steps = 50
  return config
