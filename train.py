"""Trains a DDPM: python train.py --config=configs/cifar10.py --workdir=runs/cifar10.

Running the same command again resumes from the latest checkpoint in the workdir.
"""

from absl import app

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import training_command
from diffusion_jax.training import loop

main = training_command.define_main(
  loop.train_and_evaluate, "Directory for checkpoints, metrics and samples."
)

if __name__ == "__main__":
  app.run(main, flags_parser=cli_flags.parse_flags)
