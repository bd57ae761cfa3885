"""Trains a noisy-image classifier for classifier guidance:
python train_classifier.py --config=configs/digits_classifier.py --workdir=runs/digits_classifier

Then: python sample.py --workdir=runs/digits --classifier=runs/digits_classifier --per_class=8
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import logs
from diffusion_jax.training import classifier_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logs.quiet_library_logs()
  try:
    classifier_loop.train_classifier(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=cli_flags.parse_flags)
