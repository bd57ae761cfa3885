"""Train-step throughput and sampling speed of a config, printed as a Markdown table row.

python benchmarks/benchmark.py --config=configs/cifar10.py --train_steps=5 --sample_steps=2

The train step runs on synthetic batches of the config's shape (the network's compute, not the input
pipeline). Sampling runs `sample_steps` reverse steps of the config's chain and reports the time per
step and the time for all T steps extrapolated from it (marked `~`, unless sample_steps = T).
"""

import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from diffusion_jax import models, samplers, schedules, sharding
from diffusion_jax.evaluation import run_loading
from diffusion_jax.samplers import generation
from diffusion_jax.training import state as train_state
from diffusion_jax.training.step import make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 20, "Timed train steps (after one to compile).")
_SAMPLE_STEPS = flags.DEFINE_integer("sample_steps", None, "Timed reverse steps (default: all T).")
_SAMPLE_BATCH = flags.DEFINE_integer(
  "sample_batch", None, "Sampling batch (default: the config's)."
)
flags.mark_flag_as_required("config")


def _timed(fn, *args):
  """Runs fn once to compile, then again; returns (compile+first seconds, second-run seconds)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return first, time.perf_counter() - start


def main(argv):
  del argv
  config = _CONFIG.value
  mesh = sharding.data_mesh()
  model = models.create_model(config)
  shape = run_loading.example_shape_for(config)
  sched = schedules.schedule_from_config(config.diffusion)
  state = jax.jit(
    lambda k: train_state.create_train_state(config, model, shape, k),
    out_shardings=sharding.replicated(mesh),
  )(jax.random.key(0))
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))

  batch = config.training.batch_size
  x0 = sharding.shard_batch(
    np.random.default_rng(0).uniform(-1, 1, (batch, *shape)).astype(np.float32), mesh
  )
  train_step = make_train_step(config, model, sched, mesh)
  key = jax.random.key(1)
  start = time.perf_counter()
  state, metrics = train_step(state, x0, key)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(_TRAIN_STEPS.value):
    state, metrics = train_step(state, x0, key)
  jax.block_until_ready(metrics)
  steps_per_s = _TRAIN_STEPS.value / (time.perf_counter() - start)

  num_steps = config.diffusion.num_timesteps
  timed_steps = min(_SAMPLE_STEPS.value or num_steps, num_steps)
  # The last `timed_steps` steps of the chain cost what any steps do: one network call each.
  short = schedules.make_schedule(np.asarray(sched.betas, np.float64)[:timed_steps])
  sample_batch = _SAMPLE_BATCH.value or config.sampling.batch_size
  sample_fn = generation.make_sample_fn(
    model,
    models.parametrization_of(config.model),
    short,
    (sample_batch, *shape),
    mesh,
    samplers.spec_from_config(config.sampling),
  )
  _, sample_s = _timed(sample_fn, state.ema_params, jax.random.key(2))
  per_step = sample_s / timed_steps
  chain = f"{'~' if timed_steps < num_steps else ''}{per_step * num_steps:.1f}"

  print(
    "| device | config | params | batch | compile s | train steps/s | images/s "
    "| sample batch | s per reverse step | s per T-step chain |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|")
  name = os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  print(
    f"| {device} | {name} | {num_params:,} | {batch} | {compile_s:.1f} | {steps_per_s:.2f} "
    f"| {steps_per_s * batch:.1f} | {sample_batch} | {per_step:.3f} | {chain} |"
  )


if __name__ == "__main__":
  app.run(main)
