"""A run made from given parameters (released weights): a workdir that sample.py, evaluate.py and a
resumed train.py open like one train.py wrote, or, for an autoencoder (config.model.name
autoencoder_kl), one that `autoencoder_run.load_autoencoder` opens."""

import os
import shutil

import jax
import ml_collections

from diffusion_jax import models
from diffusion_jax.training import checkpoints, run_config, workdir_lock
from diffusion_jax.training import state as train_state


def write_run(
  workdir: str,
  config: ml_collections.ConfigDict,
  params,
  *,
  step: int = 0,
  overwrite: bool = False,
  writer: str = "convert_diffusers.py",
) -> None:
  """Writes config.json and a checkpoint whose params and EMA params are both `params`, with a
  fresh optimizer state (released EMA weights are EMA weights already).

  Args:
    workdir: where config.json and checkpoints/ go.
    config: the run's config; its model must take `params`.
    params: the network's parameters.
    step: the step number the checkpoint is saved under.
    overwrite: replace the config and checkpoints of an existing run.
    writer: who writes, named to a second writer the workdir lock refuses.

  Raises:
    ValueError: the workdir holds a run and overwrite is False, or another process writes it.
  """
  ckpt_dir = os.path.join(workdir, "checkpoints")
  config_path = os.path.join(workdir, run_config.CONFIG_FILENAME)
  check_no_run(workdir, overwrite)
  with workdir_lock.WorkdirLock(workdir, writer):  # never under a training run
    check_no_run(workdir, overwrite)  # one may have started meanwhile
    if os.path.isdir(ckpt_dir):
      shutil.rmtree(ckpt_dir)
    if os.path.exists(config_path):
      os.remove(config_path)
    run_config.save_config(workdir, config)
    network = (
      models.create_autoencoder(config)
      if config.model.name == "autoencoder_kl"
      else models.create_model(config)
    )
    tx = train_state.make_optimizer(config.optim)
    # One jitted program builds the state (optimizer zeros, the EMA copy), not one per leaf.
    state = jax.jit(lambda p: train_state.state_from_params(network, p, tx))(params)
    ckpt = checkpoints.Checkpointer(workdir)
    try:
      ckpt.save(step, state.replace(step=step), wait=True)
    finally:
      ckpt.close()


def check_no_run(workdir: str, overwrite: bool) -> None:
  """Raises a ValueError if workdir holds a run (config.json or checkpoints/) and not overwrite."""
  paths = (os.path.join(workdir, run_config.CONFIG_FILENAME), os.path.join(workdir, "checkpoints"))
  existing = [p for p in paths if os.path.exists(p)]
  if existing and not overwrite:
    raise ValueError(
      f"{workdir} already holds a run ({existing[0]}); pass overwrite=True (--overwrite) to "
      "replace it"
    )
