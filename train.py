"""Trains a DDPM: python train.py --config=configs/cifar10.py --workdir=runs/cifar10.

Running the same command again resumes from the latest checkpoint in the workdir. A config whose
model is an autoencoder_kl trains latent diffusion's autoencoder instead:
python train.py --config=configs/digits_autoencoder.py --workdir=runs/digits_autoencoder
"""

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import training_command
from diffusion_jax.training import autoencoder_loop, loop


def _train(config, workdir: str) -> None:
  if config.model.name == "autoencoder_kl":
    autoencoder_loop.train_autoencoder(config, workdir)
  else:
    loop.train_and_evaluate(config, workdir)


main = training_command.define_main(_train, "Directory for checkpoints, metrics and samples.")

if __name__ == "__main__":
  cli_flags.run(main)
