"""Training a time-conditioned classifier of noisy images for classifier guidance (Dhariwal &
Nichol 2021, sec. 4.1): cross-entropy of p_phi(y | x_t, t) with x_t ~ q(x_t | x0), t ~ U{0..T-1}.

A classifier run is a workdir like a diffusion run's (config.json, checkpoints/, metrics.jsonl);
its config has the same fields, config.model describing the classifier's U-Net down path.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
import tqdm
from flax import linen as nn

from diffusion_jax import data, diffusion, models, schedules, sharding
from diffusion_jax.schedules import Schedule
from diffusion_jax.training import checkpoints, config_checks, metric_writer, run_config
from diffusion_jax.training import state as train_state
from diffusion_jax.training.workdir_lock import WorkdirLock


def classifier_step(
  state: train_state.TrainState,
  x0: jax.Array,
  labels: jax.Array,
  key: jax.Array,
  *,
  model: nn.Module,
  sched: Schedule,
  ema_decay: float,
  noise_sharding=None,
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One step of cross-entropy on noisy images; draws from fold_in(key, state.step).

  Args:
    state: the replicated train state.
    x0: [B, H, W, C] clean images; labels: int [B] their classes.
    key: the run's training key.
    model: the classifier; sched: the diffusion schedule it will guide.
    ema_decay: decay of the parameters' moving average.
    noise_sharding: the batch's sharding, for the noise.

  Returns:
    (new state, metrics) with scalar `loss` and `accuracy` on the noisy batch.
  """
  t_key, noise_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, sched.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)
  x_t = diffusion.q_sample(sched, x0, t, noise)

  def loss_fn(params):
    logits = models.apply(model, params, x_t, t, train=True, rngs={"dropout": dropout_key})
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  new_state = new_state.replace(
    ema_params=train_state.ema_update(state.ema_params, new_state.params, ema_decay)
  )
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return new_state, {"loss": loss, "accuracy": accuracy}


def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  """Trains (or resumes) the classifier config.model describes on config.data's labels.

  Reads config.data, config.diffusion (the schedule of the model it will guide), config.model
  (U-Net fields and num_classes), training.batch_size / num_train_steps / ema_decay /
  log_every / checkpoint_every / keep_checkpoints, and config.optim.
  """
  config_checks.check_config(config)
  model = models.create_classifier(config)
  lock = WorkdirLock(workdir, "train_classifier.py")
  lock.acquire()
  try:
    return _train(config, workdir, model)
  finally:
    lock.release()


def _train(config, workdir, model) -> train_state.TrainState:
  mesh = sharding.data_mesh()
  training = config.training
  sharding.check_batch_size(training.batch_size, mesh, "training.batch_size")
  sched = schedules.schedule_from_config(config.diffusion)
  ds = data.create_dataset(config.data, training.batch_size, config.seed, labeled=True)
  if ds.num_classes > model.num_classes:
    raise ValueError(
      f"the data has {ds.num_classes} classes but model.num_classes is {model.num_classes}"
    )
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  ckpt = checkpoints.Checkpointer(workdir, max_to_keep=training.keep_checkpoints)
  replicated, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  if ckpt.latest_step() is None:
    state = jax.jit(
      lambda k: train_state.create_train_state(config, model, ds.example_shape, k),
      out_shardings=replicated,
    )(init_key)
  else:
    state = ckpt.restore(train_state.abstract_train_state(config, model, ds.example_shape, mesh))
  step_fn = jax.jit(
    functools.partial(
      classifier_step,
      model=model,
      sched=sched,
      ema_decay=training.ema_decay,
      noise_sharding=batch,
    ),
    in_shardings=(replicated, batch, batch, replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
  start = int(state.step)
  is_main = jax.process_index() == 0
  if is_main:
    run_config.save_config(workdir, config, mutable=("training", "optim"))
    run_config.save_class_names(workdir, ds.class_names)
  writer = metric_writer.MetricWriter(workdir, enabled=is_main, resume_step=start or None)
  pending = []
  try:
    batches = ds.iterate(start, labeled=True)
    for step in tqdm.trange(start + 1, training.num_train_steps + 1, disable=not is_main):
      x0, labels = (sharding.shard_batch(part, mesh) for part in next(batches))
      state, metrics = step_fn(state, x0, labels, train_key)
      pending.append(metrics)
      if step % training.log_every == 0 or step == training.num_train_steps:
        host = jax.device_get(pending)
        writer.write_scalars(step, {k: float(sum(m[k] for m in host) / len(host)) for k in host[0]})
        pending = []
      if step % training.checkpoint_every == 0 or step == training.num_train_steps:
        ckpt.save(step, state)
  finally:
    ckpt.wait()
    ckpt.close()
    writer.close()
  return state


def load_classifier(workdir: str, mesh=None) -> tuple[nn.Module, dict, ml_collections.ConfigDict]:
  """A trained classifier run's (model, EMA params, config), read-only."""
  config = run_config.load_config(workdir)
  config_checks.check_config(config)
  model = models.create_classifier(config)
  shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    abstract = train_state.abstract_train_state(config, model, shape, mesh or sharding.data_mesh())
    state = ckpt.restore(abstract)
  finally:
    ckpt.close()
  return model, state.ema_params, config
