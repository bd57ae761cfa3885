"""Trains a DDPM: python train.py --config=configs/cifar10.py --workdir=runs/cifar10.

Running the same command again resumes from the latest checkpoint in the workdir. A config whose
model is an autoencoder_kl trains latent diffusion's autoencoder instead:
python train.py --config=configs/digits_autoencoder.py --workdir=runs/digits_autoencoder
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import logs
from diffusion_jax.training import autoencoder_loop, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_initialize_distributed = cli_flags.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  try:
    _initialize_distributed()
    logging.info("devices: %s", jax.devices())
    if _CONFIG.value.model.name == "autoencoder_kl":
      autoencoder_loop.train_autoencoder(_CONFIG.value, _WORKDIR.value)
    else:
      loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli_flags.parse_flags)
