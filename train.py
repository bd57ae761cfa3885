"""Trains a DDPM: python train.py --config=configs/cifar10.py --workdir=runs/cifar10.

Running the same command again resumes from the latest checkpoint in the workdir.
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from diffusion_jax import checkpoints, cli_flags, train_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() first (multi-host runs)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  checkpoints.quiet_library_logs()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info("devices: %s", jax.devices())
  try:
    train_loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli_flags.parse_flags)
