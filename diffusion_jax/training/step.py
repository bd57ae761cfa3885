"""One training step (DDPM Algorithm 1, with any parametrization and loss weighting) plus the EMA
update, jitted once for the data-parallel mesh."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from diffusion_jax import losses, models, parametrization, sharding
from diffusion_jax.schedules import Schedule
from diffusion_jax.training.state import TrainState, ema_update, learning_rate_schedule


def train_step(
  state: TrainState,
  x0: jax.Array,
  key: jax.Array,
  labels: jax.Array | None = None,
  *,
  model: nn.Module,
  kind: parametrization.Parametrization,
  sched: Schedule,
  ema_decay: float,
  random_flip: bool = False,
  lr_schedule: optax.Schedule | None = None,
  weighting: str = "simple",
  min_snr_gamma: float = 5.0,
  vlb_weight: float = 0.001,
  label_dropout: float = 0.0,
  noise_sharding=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of the diffusion loss (`losses.diffusion_loss`) plus the EMA update.

  Every random draw comes from fold_in(key, state.step), so a step is a pure function of
  (state, batch, key) and a resumed run repeats an uninterrupted one exactly.

  Args:
    state: the replicated train state.
    x0: [B, ...] data batch, split over devices.
    key: the run's training key.
    labels: int [B] class labels for a class-conditional model, split like x0; None otherwise.
    model: the network, called as the `models` call contract says.
    kind: what it predicts.
    sched: the schedule.
    ema_decay: decay of the parameters' moving average.
    random_flip: flip images horizontally with probability 1/2.
    lr_schedule: the learning rate by step, for the logged metrics.
    weighting, min_snr_gamma, vlb_weight: the loss (see `losses`).
    label_dropout: the probability that a label is replaced by the null class (the model's
      num_classes), which trains the unconditional model of classifier-free guidance.
    noise_sharding: the batch's sharding, for the noise.

  Returns:
    (new state, metrics) with scalar `loss`, `grad_norm` and, with lr_schedule, `lr`.
  """
  step_key = jax.random.fold_in(key, state.step)
  flip_key, t_key, noise_key, dropout_key = jax.random.split(step_key, 4)
  batch = x0.shape[0]
  if random_flip and x0.ndim == 4:
    flip = jax.random.bernoulli(flip_key, 0.5, (batch,))
    x0 = jnp.where(flip[:, None, None, None], x0[:, :, ::-1, :], x0)
  t = jax.random.randint(t_key, (batch,), 0, sched.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)

  if labels is not None and label_dropout > 0:
    # Its own fold, so the draws of an unconditional run stay what they were.
    drop = jax.random.bernoulli(jax.random.fold_in(step_key, 4), label_dropout, labels.shape)
    labels = jnp.where(drop, models.num_classes_of(model), labels)

  def loss_fn(params):
    network = lambda x_t, t_B: models.apply(
      model, params, x_t, t_B, train=True, rngs={"dropout": dropout_key}, labels=labels
    )
    loss_B = losses.diffusion_loss(
      kind.denoiser(network),
      sched,
      x0,
      t,
      noise,
      weighting=weighting,
      min_snr_gamma=min_snr_gamma,
      vlb_weight=vlb_weight,
    )
    return jnp.mean(loss_B)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grads)
  new_state = new_state.replace(
    ema_params=ema_update(state.ema_params, new_state.params, ema_decay)
  )
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  if lr_schedule is not None:
    metrics["lr"] = lr_schedule(state.step)
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module, sched: Schedule, mesh):
  """jit(train_step) for this config: state replicated and donated, batch split over 'data'.

  A class-conditional model (models.num_classes_of > 0) is called step(state, x0, key, labels).
  """
  step = functools.partial(
    train_step,
    model=model,
    kind=models.parametrization_of(config.model),
    sched=sched,
    ema_decay=config.training.ema_decay,
    random_flip=config.data.random_flip,
    lr_schedule=learning_rate_schedule(config.optim),
    weighting=config.training.loss_weighting,
    min_snr_gamma=config.training.min_snr_gamma,
    vlb_weight=config.training.vlb_weight,
    label_dropout=config.training.label_dropout,
    noise_sharding=sharding.batch_sharding(mesh),
  )
  replicated, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  in_shardings = (replicated, batch, replicated)
  if models.num_classes_of(model):
    in_shardings += (batch,)  # labels [B], split like the images
  return jax.jit(
    step,
    in_shardings=in_shardings,
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )
