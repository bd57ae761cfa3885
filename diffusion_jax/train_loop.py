"""train_and_evaluate: the training loop with checkpoints, metrics, previews and preemption."""

import itertools
import os
import signal
import sys
import time

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from diffusion_jax import (
  checkpoints,
  config_checks,
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
  workdir_lock,
)


class _StopRequest:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a flag the loop polls, so it can save before exiting.

  A second Ctrl-C stops at once, without saving.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = None  # the name of the signal that asked to stop
    self._previous = {sig: signal.signal(sig, self._handle) for sig in self._SIGNALS}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.requested == "SIGINT":
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      print(
        "\nCtrl-C: saving a checkpoint after this step (press it again to stop without saving)",
        file=sys.stderr,
      )

  def reached(self, step: int) -> bool:
    """Whether to save and stop after `step`; on several hosts, all of them agree on the step."""
    if jax.process_count() > 1:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested is not None

  def restore(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _last_good(ckpt: checkpoints.Checkpointer) -> str:
  ckpt.wait()  # a save still in flight counts
  step = ckpt.latest_step()
  return "No checkpoint was saved." if step is None else f"The last good checkpoint is step {step}."


def _check_finite(host_metrics: list, first_step: int, ckpt: checkpoints.Checkpointer) -> None:
  """Raises at the first non-finite loss among the steps since the last check."""
  for offset, loss in enumerate(m["loss"] for m in host_metrics):
    if not np.isfinite(loss):
      raise FloatingPointError(
        f"loss is {loss} at step {first_step + offset + 1}; training stopped. {_last_good(ckpt)}"
      )


def _take_workdir_lock(workdir: str) -> workdir_lock.WorkdirLock | None:
  """The first process locks the workdir; every process fails alike if it is taken."""
  lock, error = None, ""
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir, "train.py")
    try:
      lock.acquire()
    except ValueError as e:
      lock, error = None, str(e)
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(bool(error)))
    if taken and not error:
      error = f"{workdir} is being written by another process; one writer per workdir"
  if error:
    raise ValueError(error)
  return lock


def _restore_or_init(config, model, example_shape, mesh, ckpt, init_key) -> train_lib.TrainState:
  """The newest readable checkpoint's state, or a fresh one; damaged checkpoints are set aside."""
  if ckpt.latest_step() is None:
    return jax.jit(
      lambda k: train_lib.create_train_state(config, model, example_shape, k),
      out_shardings=sharding.replicated(mesh),
    )(init_key)
  abstract = train_lib.abstract_train_state(config, model, example_shape, mesh)
  state, unreadable = ckpt.restore_newest_readable(abstract)
  for bad in unreadable:
    # Saving that step again later would collide with it; keep it, out of the way.
    moved = ckpt.set_aside(bad.step) if jax.process_index() == 0 else bad.path
    logging.warning("moved the unreadable checkpoint of step %d to %s", bad.step, moved)
  if unreadable and jax.process_count() > 1:
    multihost_utils.sync_global_devices("unreadable checkpoints set aside")
    ckpt.reload()
  logging.info("resumed from step %d", int(state.step))
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_lib.TrainState:
  """Trains per config in workdir, resuming from its latest checkpoint; returns the final state.

  Only one process may write a workdir at a time (see `workdir_lock`); a second one is refused.
  """
  config_checks.check_config(config)
  lock = _take_workdir_lock(workdir)
  try:
    return _train(config, workdir)
  finally:
    if lock:
      lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str) -> train_lib.TrainState:
  mesh = sharding.data_mesh()
  training = config.training
  sharding.check_batch_size(training.batch_size, mesh, "training.batch_size")
  model = models.create_model(config)
  sched = schedules.schedule_from_config(config.diffusion)
  ds = data.create_dataset(config.data, training.batch_size, config.seed)
  init_key, train_key, preview_key, eval_key = jax.random.split(jax.random.key(config.seed), 4)
  quick_eval = _make_quick_eval(config, model, sched, ds, mesh, eval_key)

  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=training.keep_checkpoints)
  writer = None
  try:
    state = _restore_or_init(config, model, ds.example_shape, mesh, ckpt, init_key)
    start = int(state.step)
    batches = ds.iterate(start)
    first_batch = next(batches)  # reads (and so checks) data before the run is recorded
    is_main = jax.process_index() == 0
    if is_main:
      # A resumed run may change how it trains, but not what it models.
      checkpoints.save_config(workdir, config, mutable=("training", "optim", "sampling", "eval"))
    writer = metrics.MetricWriter(workdir, enabled=is_main, resume_step=start if start else None)
    batches = itertools.chain([first_batch], batches)
    return _run_steps(
      config,
      model,
      sched,
      ds,
      mesh,
      state,
      batches,
      ckpt,
      writer,
      quick_eval,
      workdir,
      train_key,
      preview_key,
    )
  finally:
    ckpt.wait()
    ckpt.close()
    if writer:
      writer.close()


def _run_steps(
  config,
  model,
  sched,
  ds,
  mesh,
  state,
  batches,
  ckpt,
  writer,
  quick_eval,
  workdir,
  train_key,
  preview_key,
):
  """The loop from the state's step to training.num_train_steps, with logging, previews,
  evaluations, checkpoints and stopping on request."""
  training = config.training
  train_step = train_lib.make_train_step(config, sched, mesh)
  start = int(state.step)
  num_steps = training.num_train_steps
  stop_request = _StopRequest()
  pending, last_check, last_time = [], start, time.perf_counter()
  is_main = jax.process_index() == 0
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
      # Decided once, after all of this step's work, so a stop request at any point is saved.
      stop = stop_request.reached(step)
      save = step % training.checkpoint_every == 0 or step == num_steps or stop
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
        try:
          ckpt.save(step, state)
        except checkpoints.NonFiniteStateError:
          # The loss of this step was finite, but its update was not.
          raise FloatingPointError(
            f"the parameters hold inf or NaN after the update of step {step}; training stopped "
            f"without saving them. {_last_good(ckpt)}"
          ) from None
      if stop:
        logging.warning(
          "%s: saved a checkpoint at step %d and stopped",
          stop_request.requested or "preemption",
          step,
        )
        break
  finally:
    bar.close()
    stop_request.restore()
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
