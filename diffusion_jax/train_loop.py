"""train_and_evaluate: the training loop with checkpoints, metrics, previews and preemption."""

import os
import signal
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from diffusion_jax import (
  checkpoints,
  data,
  evaluation,
  feature_nets,
  generation,
  metrics,
  models,
  previews,
  samplers,
  schedules,
  sharding,
  train_lib,
)


class _Preemption:
  """Turns SIGTERM into a flag the loop polls, so it can save before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    self.requested = True

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; on several hosts, all of them agree on the step."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _check_finite(host_metrics: list, first_step: int, ckpt: checkpoints.Checkpointer) -> None:
  """Raises at the first non-finite loss among the steps since the last check."""
  for offset, loss in enumerate(m["loss"] for m in host_metrics):
    if not np.isfinite(loss):
      raise FloatingPointError(
        f"loss is {loss} at step {first_step + offset + 1}; training stopped. "
        f"The last good checkpoint is step {ckpt.latest_step()}."
      )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_lib.TrainState:
  """Trains per config in workdir, resuming from its latest checkpoint; returns the final state."""
  mesh = sharding.data_mesh()
  training = config.training
  sharding.check_batch_size(training.batch_size, mesh, "training.batch_size")
  model = models.create_model(config)
  sched = schedules.schedule_from_config(config.diffusion)
  ds = data.create_dataset(config.data, training.batch_size, config.seed)
  init_key, train_key, preview_key, eval_key = jax.random.split(jax.random.key(config.seed), 4)
  quick_eval = _make_quick_eval(config, model, sched, ds, mesh, eval_key)

  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=training.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(train_lib.abstract_train_state(config, model, ds.example_shape, mesh))
    logging.info("resumed from step %d", int(state.step))
  else:
    state = jax.jit(
      lambda k: train_lib.create_train_state(config, model, ds.example_shape, k),
      out_shardings=sharding.replicated(mesh),
    )(init_key)
  is_main = jax.process_index() == 0
  if is_main:
    # A resumed run may change how it trains, but not what it models.
    checkpoints.save_config(workdir, config, mutable=("training", "optim", "sampling", "eval"))
  train_step = train_lib.make_train_step(config, sched, mesh)
  writer = metrics.MetricWriter(workdir, enabled=is_main)

  start = int(state.step)
  num_steps = training.num_train_steps
  preemption = _Preemption()
  pending, last_check, last_time = [], start, time.perf_counter()
  batches = ds.iterate(start)
  bar = tqdm.tqdm(total=num_steps, initial=start, desc="train", unit="step", disable=not is_main)
  try:
    for step in range(start + 1, num_steps + 1):
      x0 = sharding.shard_batch(next(batches), mesh)
      state, step_metrics = train_step(state, x0, train_key)
      pending.append(step_metrics)
      bar.update(1)
      if training.sample_every and (step % training.sample_every == 0 or step == num_steps):
        _write_preview(config, model, sched, state, ds, mesh, preview_key, workdir, writer, step)
      if quick_eval and step % config.eval.every_steps == 0:
        writer.write_scalars(step, quick_eval(state.ema_params))
      # Decided once, after all of this step's work, so a SIGTERM at any point is saved.
      preempted = preemption.reached(step)
      save = step % training.checkpoint_every == 0 or step == num_steps or preempted
      if save or step % training.log_every == 0:
        host_metrics = jax.device_get(pending)  # one transfer for every step since the last log
        _check_finite(host_metrics, last_check, ckpt)
        now = time.perf_counter()
        scalars = {k: float(np.mean([m[k] for m in host_metrics])) for k in host_metrics[0]}
        scalars["steps_per_sec"] = len(pending) / (now - last_time)
        scalars["images_per_sec"] = scalars["steps_per_sec"] * training.batch_size
        writer.write_scalars(step, scalars)
        bar.set_postfix(loss=f"{scalars['loss']:.4f}")
        pending, last_check, last_time = [], step, now
      if save:
        ckpt.save(step, state)
      if preempted:
        logging.warning("SIGTERM: saved a checkpoint at step %d and stopped", step)
        break
  finally:
    bar.close()
    preemption.restore()
    ckpt.wait()
    ckpt.close()
    writer.close()
  return state


def _make_quick_eval(config, model, sched, ds, mesh, key):
  """fn(params) -> {"eval/fid": ..., ...} when config.eval.every_steps > 0, else None.

  The feature network and reference statistics are set up here, so a missing weights file stops
  the run before training rather than at the first evaluation. Every evaluation uses the same
  key, so the logged numbers differ only through the params.
  """
  if not config.eval.every_steps:
    return None
  evaluation.check_image_data(config, ds.example_shape)
  net = feature_nets.create_feature_net(
    config.eval.feature_net, inception_weights=config.eval.inception_weights
  )
  ref = evaluation.load_reference(
    config,
    net,
    stats_path=config.eval.ref_stats,
    split=config.eval.ref_split,
    batch_size=config.sampling.batch_size,
    mesh=mesh,
  )

  def quick_eval(params):
    scores = evaluation.quick_scores(
      config, model, params, sched, ds.example_shape, key, mesh, net, ref
    )
    return {f"eval/{name}": value for name, value in scores.items()}

  return quick_eval


def _write_preview(config, model, sched, state, ds, mesh, key, workdir, writer, step):
  """Samples from the EMA params and writes samples/step_<N>.png (a grid, or a 2D scatter)."""
  samples, _ = generation.generate(
    model,
    state.ema_params,
    sched,
    ds.example_shape,
    config.training.num_sample_images,
    config.sampling.batch_size,
    key,
    mesh,
    samplers.spec_from_config(config.sampling),
    progress=False,
  )
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "previews", f"step_{step:07d}.png")
  reference = None if ds.is_image else ds.data_samples(min(2000, ds.num_examples))
  picture = previews.save_preview(path, samples, reference)
  writer.write_images(step, {"samples": picture})
