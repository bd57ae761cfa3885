"""train_and_evaluate: the diffusion training loop with checkpoints, metrics, previews and
preemption; its loop, `run_training`, serves any train state and step (the autoencoder's too)."""

import dataclasses
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils

from diffusion_jax import data, images, models, samplers, schedules, sharding
from diffusion_jax.metrics import feature_nets, sample_quality
from diffusion_jax.samplers import generation
from diffusion_jax.training import (
  checkpoints,
  config_checks,
  latent_cache,
  latent_space,
  metric_writer,
  run_config,
  workdir_lock,
)
from diffusion_jax.training import state as train_state
from diffusion_jax.training.step import make_train_steps


class _StopRequest:
  """Turns SIGTERM and Ctrl-C (SIGINT) into a stop the loop polls, so it can save before exiting.

  A second Ctrl-C stops at once, without saving. With several processes SIGTERM belongs to the
  preemption notifier that jax.distributed.initialize starts (a Python handler would replace it):
  a signal to any process reaches the coordination service, which picks the step where all of them
  save. Ctrl-C there is passed on to that notifier as a SIGTERM.
  """

  def __init__(self):
    self.requested = None  # the name of the signal that asked to stop
    self._multiprocess = jax.process_count() > 1
    signals = (signal.SIGINT,) if self._multiprocess else (signal.SIGTERM, signal.SIGINT)
    self._previous = {sig: signal.signal(sig, self._handle) for sig in signals}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT and self.requested == "SIGINT":
      raise KeyboardInterrupt
    self.requested = signal.Signals(signum).name
    if signum == signal.SIGINT:
      print(
        "\nCtrl-C: saving a checkpoint after this step (press it again to stop without saving)",
        file=sys.stderr,
      )
      if self._multiprocess:
        signal.raise_signal(signal.SIGTERM)  # to the notifier, which tells every process

  def reached(self, call: int) -> bool:
    """Whether to save and stop after this session's call-th jitted call (counted from 1); on
    several processes, all of them agree on it.

    The coordination service stops at the call after the latest any process has reported, so
    every call must be reported, numbered without gaps (steps would skip numbers when a call
    runs several of them).
    """
    if self._multiprocess:
      return multihost_utils.reached_preemption_sync_point(call)
    return self.requested is not None

  def name(self) -> str:
    return self.requested or "SIGTERM"

  def restore(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _last_good(ckpt: checkpoints.Checkpointer) -> str:
  ckpt.wait()  # a save still in flight counts
  step = ckpt.latest_step()
  return "No checkpoint was saved." if step is None else f"The last good checkpoint is step {step}."


def _check_finite(losses: np.ndarray, first_step: int, ckpt: checkpoints.Checkpointer) -> None:
  """Raises at the first non-finite loss among the steps since the last check.

  Args:
    losses: [steps] the loss of every step after first_step, in order.
  """
  for offset, loss in enumerate(losses):
    if not np.isfinite(loss):
      raise FloatingPointError(
        f"loss is {loss} at step {first_step + offset + 1}; training stopped. {_last_good(ckpt)}"
      )


def _take_workdir_lock(workdir: str, script: str) -> workdir_lock.WorkdirLock | None:
  """The first process locks the workdir for `script`; every process fails alike if it is taken."""
  lock, error = None, ""
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir, script)
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


def _restore_or_init(make_state, mesh, ckpt, init_key) -> train_state.TrainState:
  """The newest readable checkpoint's state, or make_state(init_key); damaged checkpoints are set
  aside."""
  if ckpt.latest_step() is None:
    return jax.jit(make_state, out_shardings=sharding.replicated(mesh))(init_key)
  abstract = train_state.abstract_state(make_state, mesh)
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


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, model: nn.Module | None = None
) -> train_state.TrainState:
  """Trains per config in workdir, resuming from its latest checkpoint; returns the final state.

  Only one process may write a workdir at a time (see `workdir_lock`); a second one is refused.

  Args:
    config: the experiment config (see configs/default.py).
    workdir: the run's directory.
    model: optional network to train instead of config.model's: any Flax module keeping the
      call contract of `models`. The run records it as config.model.name =
      "module:Class" with its fields in config.model.kwargs, so sample.py and evaluate.py can
      rebuild it wherever that module is importable.
  """
  if model is not None:
    config = models.record_model(config, model)
  train = lambda config: _train(
    config, workdir, model if model is not None else models.create_model(config)
  )
  return train_in_workdir(config, workdir, "train.py", train)


def train_in_workdir(
  config: ml_collections.ConfigDict,
  workdir: str,
  script: str,
  train: Callable[[ml_collections.ConfigDict], train_state.TrainState],
) -> train_state.TrainState:
  """Checks config, makes its file paths absolute and runs train(config) with the workdir locked
  for `script` (one writer per workdir, see `workdir_lock`)."""
  config_checks.check_config(config)
  config = _with_absolute_paths(config)
  lock = _take_workdir_lock(workdir, script)
  try:
    return train(config)
  finally:
    if lock:
      lock.release()


def _with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy whose file paths are absolute, so the recorded run opens from any directory."""
  config = config.copy_and_resolve_references()
  paths = (
    ("data", "path"),
    ("data", "autoencoder_run"),
    ("data", "latent_cache"),
    ("eval", "inception_weights"),
    ("eval", "ref_stats"),
  )
  for group, field in paths:
    if config[group][field]:
      config[group][field] = os.path.abspath(os.path.expanduser(config[group][field]))
  return config


# What a resumed run may change: how it trains, not what it models.
_MUTABLE_ON_RESUME = ("training", "optim", "sampling", "eval", "data.latent_cache")

# Writes a preview of the state at a step (previews/, the metric log); called on every process.
Preview = Callable[[metric_writer.MetricWriter, train_state.TrainState, int], None]


@dataclasses.dataclass
class _Run:
  """What every step of a training run works with, besides the state."""

  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  ckpt: checkpoints.Checkpointer
  writer: metric_writer.MetricWriter
  train_steps: Callable  # `step.jit_steps`'s program
  train_key: jax.Array
  preview: Preview | None
  quick_eval: Callable | None


@dataclasses.dataclass
class _SamplePreviews:
  """What the diffusion run's previews are drawn with."""

  config: ml_collections.ConfigDict
  workdir: str
  model: nn.Module
  sched: schedules.Schedule
  ds: data.Dataset
  example_shape: tuple[int, ...]  # what the model draws: the data's, or its latents'
  to_images: Callable[[np.ndarray], np.ndarray]  # the drawn samples as data
  mesh: jax.sharding.Mesh
  key: jax.Array


def _train(
  config: ml_collections.ConfigDict, workdir: str, model: nn.Module
) -> train_state.TrainState:
  mesh = sharding.data_mesh()
  training = config.training
  sharding.check_batch_size(training.batch_size, mesh, "training.batch_size")
  accum = training.grad_accum_steps
  if training.batch_size % (accum * mesh.size):
    raise ValueError(
      f"training.batch_size {training.batch_size} must be a multiple of training.grad_accum_steps "
      f"times the device count, {accum} x {mesh.size}: each micro-batch is split over the devices"
    )
  sched = schedules.schedule_from_config(config.diffusion)
  num_classes = models.num_classes_of(model)
  ds = data.create_dataset(config.data, training.batch_size, config.seed, labeled=num_classes > 0)
  if ds.num_classes > num_classes:
    raise ValueError(
      f"the data has {ds.num_classes} classes but model.num_classes is {num_classes}; set "
      f"model.num_classes={ds.num_classes}"
    )
  train_ds, shape, to_images = ds, ds.example_shape, lambda x: x
  latents_of = frozen = None
  if config.data.autoencoder_run:
    space, config = latent_space.open_for_training(config, workdir, mesh)
    shape = space.latent_shape(ds.example_shape)
    to_images = lambda z: space.decode_batches(z, config.sampling.batch_size)
    if config.data.latent_cache:
      # A resumed run that may not continue stops here, before a long encode, not after it.
      run_config.check_resumable(workdir, config, mutable=_MUTABLE_ON_RESUME)
      train_ds = latent_cache.cached_dataset(
        config, space, training.batch_size, labeled=num_classes > 0
      )
      latents_of, frozen = latent_cache.scaled_latents, np.float32(space.scale)
    else:
      latents_of, frozen = space.latents_of_images, space.params
  init_key, train_key, preview_key, eval_key = jax.random.split(jax.random.key(config.seed), 4)
  previews = _SamplePreviews(config, workdir, model, sched, ds, shape, to_images, mesh, preview_key)
  return run_training(
    config,
    workdir,
    train_ds,
    mesh,
    make_state=lambda k: train_state.create_train_state(config, model, shape, k),
    train_steps=make_train_steps(config, model, sched, mesh, latents_of, frozen),
    init_key=init_key,
    train_key=train_key,
    preview=lambda writer, state, step: _write_preview(previews, writer, state, step),
    quick_eval=_make_quick_eval(config, model, sched, ds, shape, to_images, mesh, eval_key),
    labeled=num_classes > 0,
  )


def run_training(
  config: ml_collections.ConfigDict,
  workdir: str,
  ds: data.Dataset,
  mesh: jax.sharding.Mesh,
  *,
  make_state: Callable[[jax.Array], train_state.TrainState],
  train_steps: Callable,
  init_key: jax.Array,
  train_key: jax.Array,
  preview: Preview | None = None,
  quick_eval: Callable | None = None,
  labeled: bool = False,
) -> train_state.TrainState:
  """The loop every trainer shares, from the newest readable checkpoint (or a fresh state) to
  training.num_train_steps: config.json recorded, metrics logged, previews, quick evaluations,
  checkpoints, a stop on SIGTERM or Ctrl-C that saves first, and non-finite losses refused.

  Args:
    config: the run's config (training.* sets the periods); recorded as the run's config.json.
    workdir: the run's directory, locked by the caller (`train_in_workdir`).
    ds: the training data; batch b of the run is ds.iterate's b-th, so a resumed run repeats it.
    mesh: the devices.
    make_state: a fresh train state from a key.
    train_steps: `step.jit_steps`'s program of the run's step, whose metrics include `loss`.
    init_key: make_state's key; train_key: the steps' key.
    preview: writes a preview every training.sample_every steps (when that is > 0).
    quick_eval: params -> {name: value}, logged every eval.every_steps steps.
    labeled: the batches are (images, labels), and the run records the class names.
  """
  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=config.training.keep_checkpoints)
  writer = None
  try:
    state = _restore_or_init(make_state, mesh, ckpt, init_key)
    start = int(state.step)
    batches = ds.iterate(start, labeled=labeled)
    first_batch = next(batches)  # reads (and so checks) data before the run is recorded
    is_main = jax.process_index() == 0
    if is_main:
      run_config.save_config(workdir, config, mutable=_MUTABLE_ON_RESUME)
      if labeled:
        run_config.save_class_names(workdir, ds.class_names)
    resume_step = start if start else None
    writer = metric_writer.MetricWriter(workdir, enabled=is_main, resume_step=resume_step)
    run = _Run(config, mesh, ckpt, writer, train_steps, train_key, preview, quick_eval)
    return _run_steps(run, state, itertools.chain([first_batch], batches))
  finally:
    ckpt.wait()
    ckpt.close()
    if writer:
      writer.close()


def _run_steps(run: _Run, state: train_state.TrainState, batches) -> train_state.TrainState:
  """The loop from the state's step to training.num_train_steps, with logging, previews,
  evaluations, checkpoints and stopping on request.

  It runs training.steps_per_call = n steps per jitted call. Calls end at the multiples of n (a
  resumed run's first call may be shorter to reach one) and at num_train_steps. Everything else
  happens at call ends, which is why the periods of logs, checkpoints, previews and evaluations
  must be multiples of n (config_checks).
  """
  config, ckpt, writer = run.config, run.ckpt, run.writer
  training = config.training
  stacked_sharding = sharding.frames_sharding(run.mesh)
  step = int(state.step)
  num_steps, per_call = training.num_train_steps, training.steps_per_call
  stop_request = _StopRequest()
  calls, pending, last_check, last_time = 0, [], step, time.perf_counter()
  # XLA's CPU client can deadlock when processes with several devices each queue many programs
  # with cross-process collectives; there, wait for call c - 1 once call c is queued.
  throttle = jax.process_count() > 1 and jax.default_backend() == "cpu"
  is_main = jax.process_index() == 0
  bar = tqdm.tqdm(total=num_steps, initial=step, desc="train", unit="step", disable=not is_main)
  try:
    while step < num_steps:
      count = min(per_call - step % per_call, num_steps - step)
      call_batches = [next(batches) for _ in range(count)]
      # Each batch is images, or (images, labels) for a class-conditional run.
      labeled = isinstance(call_batches[0], tuple)
      parts = zip(*call_batches, strict=True) if labeled else [call_batches]
      stacked = [
        jax.make_array_from_process_local_data(stacked_sharding, np.stack(part)) for part in parts
      ]
      x0, *labels = stacked
      # Even one step per call goes through jit_steps's program: XLA may round a scan's body
      # differently from a lone step, and this way steps_per_call changes the speed, never the
      # result.
      state, call_metrics = run.train_steps(state, x0, run.train_key, *labels)
      step, calls = step + count, calls + 1
      pending.append(call_metrics)
      if throttle and len(pending) > 1:
        jax.block_until_ready(pending[-2])
      bar.update(count)
      preview_due = training.sample_every and (
        step % training.sample_every == 0 or step == num_steps
      )
      if run.preview and preview_due:
        run.preview(writer, state, step)
      if run.quick_eval and step % config.eval.every_steps == 0:
        writer.write_scalars(step, run.quick_eval(state.ema_params))
      # Decided once, after all of this call's work, so a stop request at any point is saved.
      stop = stop_request.reached(calls)
      save = step % training.checkpoint_every == 0 or step == num_steps or stop
      if save or step % training.log_every == 0:
        # One transfer for every step since the last log, then [steps] arrays per metric.
        host_metrics = jax.device_get(pending)
        host_metrics = {k: np.concatenate([m[k] for m in host_metrics]) for k in host_metrics[0]}
        _check_finite(host_metrics["loss"], last_check, ckpt)
        now = time.perf_counter()
        scalars = {k: float(np.mean(values)) for k, values in host_metrics.items()}
        scalars["steps_per_sec"] = (step - last_check) / (now - last_time)
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
        logging.warning("%s: saved a checkpoint at step %d and stopped", stop_request.name(), step)
        break
  finally:
    bar.close()
    stop_request.restore()
  return state


def _make_quick_eval(config, model, sched, ds, example_shape, to_images, mesh, key):
  """fn(params) -> {"eval/fid": ..., ...} when config.eval.every_steps > 0, else None; the model
  draws example_shape, which to_images takes to the data's images (latent diffusion decodes).

  The feature network and reference statistics are set up here, so a missing weights file stops
  the run before training rather than at the first evaluation. Every evaluation uses the same
  key, so the logged numbers differ only through the params.
  """
  if not config.eval.every_steps:
    return None
  sample_quality.check_image_data(config, example_shape)
  net = feature_nets.create_feature_net(
    config.eval.feature_net,
    inception_weights=config.eval.inception_weights,
    inception_label_map=config.eval.inception_label_map,
  )
  ref = sample_quality.load_reference(
    config,
    net,
    stats_path=config.eval.ref_stats,
    split=config.eval.ref_split,
    batch_size=config.sampling.batch_size,
    mesh=mesh,
  )

  def quick_eval(params):
    scores = sample_quality.quick_scores(
      config,
      model,
      params,
      sched,
      example_shape,
      key,
      mesh,
      net,
      ref,
      ds.class_names,
      to_images=to_images,
    )
    return {f"eval/{name}": value for name, value in scores.items()}

  return quick_eval


def _write_preview(
  previews: _SamplePreviews,
  writer: metric_writer.MetricWriter,
  state: train_state.TrainState,
  step: int,
) -> None:
  """Samples from the EMA params and writes samples/step_<N>.png (a grid, or a 2D scatter); a
  conditional model draws the classes in turn, one class per grid column, guided by
  sampling.guidance."""
  config = previews.config
  num_classes = models.num_classes_of(previews.model)
  labels = None
  if num_classes:
    labels = np.arange(config.training.num_sample_images) % num_classes
  samples, _ = generation.generate(
    previews.model,
    models.parametrization_of(config.model),
    state.ema_params,
    previews.sched,
    previews.example_shape,
    config.training.num_sample_images,
    config.sampling.batch_size,
    previews.key,
    previews.mesh,
    samplers.spec_from_config(config.sampling),
    progress=False,
    labels=labels,
    guidance_scale=config.sampling.guidance if num_classes else 0.0,
  )
  samples = previews.to_images(samples)
  if jax.process_index() != 0:
    return
  path = os.path.join(previews.workdir, "previews", f"step_{step:07d}.png")
  reference = None
  if not previews.ds.is_image:  # over the first points of all the data, not of this process's share
    whole = data.create_dataset(config.data, 1, config.seed, process_index=0, process_count=1)
    reference = whole.data_samples(min(2000, whole.num_examples))
  picture = images.save_preview(path, samples, reference, ncols=num_classes or None)
  writer.write_images(step, {"samples": picture})
