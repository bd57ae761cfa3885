"""Load a trained run (config, model, schedule, params) from a train.py workdir."""

import dataclasses

import ml_collections
from flax import linen as nn

from diffusion_jax import checkpoints, config_checks, data, models, schedules, sharding, train_lib
from diffusion_jax.schedules import Schedule


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  model: nn.Module
  sched: Schedule
  params: dict
  step: int
  example_shape: tuple[int, ...]


def example_shape_for(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The per-example shape the config trains on, without opening the dataset."""
  if config.data.source == "builtin" and config.data.name != "digits":
    # 2D toys are generated in memory, which is cheap.
    return data.create_dataset(
      config.data, 1, config.seed, process_index=0, process_count=1
    ).example_shape
  size = config.data.image_size
  return (size, size, config.data.num_channels)


def load_run(workdir: str, step: int | None = None, use_ema: bool = True, mesh=None) -> LoadedRun:
  """Restores workdir's config and the chosen checkpoint (default latest); EMA params by default."""
  config = checkpoints.load_config(workdir)
  config_checks.check_config(config)
  model = models.create_model(config)
  mesh = mesh or sharding.data_mesh()
  shape = example_shape_for(config)
  # Read-only: the run may be training right now, and its trainer owns the directory.
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    state = ckpt.restore(train_lib.abstract_train_state(config, model, shape, mesh), step)
  finally:
    ckpt.close()
  return LoadedRun(
    config=config,
    model=model,
    sched=schedules.schedule_from_config(config.diffusion),
    params=state.ema_params if use_ema else state.params,
    step=int(state.step),
    example_shape=shape,
  )
