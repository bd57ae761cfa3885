"""The command line of the training scripts (train.py, train_classifier.py): --config, --workdir
and the device flags, and a main that runs the training with every error as one line."""

import sys
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from diffusion_jax.cli import cpu_backend, logs
from diffusion_jax.cli import flags as cli_flags

TrainFn = Callable[[ml_collections.ConfigDict, str], Any]


def define_main(train: TrainFn, workdir_help: str) -> Callable[[list[str]], None]:
  """Defines --config (locked), --workdir and `cli_flags.define_device_flags`' flags.

  Args:
    train: train(config, workdir), e.g. `training.loop.train_and_evaluate`.
    workdir_help: what --workdir holds, for --help.

  Returns:
    main(argv) for `cli_flags.run(main)`.
  """
  config = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  initialize_devices = cli_flags.define_device_flags()
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv: list[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logs.quiet_library_logs()
    try:
      training = config.value.training
      initialize_devices(
        cpu_backend.micro_batches_split(training.batch_size, training.grad_accum_steps)
      )
      train(config.value, workdir.value)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)

  return main
