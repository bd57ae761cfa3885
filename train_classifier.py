"""Trains a noisy-image classifier for classifier guidance:
python train_classifier.py --config=configs/digits_classifier.py --workdir=runs/digits_classifier

Then: python sample.py --workdir=runs/digits --classifier=runs/digits_classifier --per_class=8
"""

from diffusion_jax.cli import flags as cli_flags
from diffusion_jax.cli import training_command
from diffusion_jax.training import classifier_loop

main = training_command.define_main(
  classifier_loop.train_classifier, "Directory for checkpoints and metrics."
)

if __name__ == "__main__":
  cli_flags.run(main)
