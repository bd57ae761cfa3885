"""Training: TrainState with EMA params, the jitted data-parallel L_simple step, and the loop."""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax.training import train_state

from diffusion_jax import diffusion, sharding
from diffusion_jax.schedules import Schedule


class TrainState(train_state.TrainState):
  """Adds the exponential moving average of the parameters, which sampling uses by default."""

  ema_params: Any


def learning_rate_schedule(optim_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to the learning rate over warmup_steps, then constant (as DDPM)."""
  lr, warmup = optim_config.learning_rate, optim_config.warmup_steps
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return lambda step: lr * jnp.minimum(1.0, step / warmup)


def make_optimizer(optim_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with the warmup schedule, after optional global-norm clipping."""
  adam = optax.adam(
    learning_rate_schedule(optim_config),
    b1=optim_config.beta1,
    b2=optim_config.beta2,
    eps=optim_config.eps,
  )
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adam)
  return adam


def create_train_state(
  config: ml_collections.ConfigDict, model: nn.Module, example_shape: tuple[int, ...], key
) -> TrainState:
  """Initialises params (and an EMA copy of them) for inputs of example_shape."""
  x = jnp.zeros((1, *example_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  params = model.init({"params": key}, x, t, train=False)["params"]
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=make_optimizer(config.optim),
    # A real copy: the step donates the state, and shared buffers cannot be donated twice.
    ema_params=jax.tree.map(jnp.copy, params),
  )


def ema_update(ema_params, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def train_step(
  state: TrainState,
  x0: jax.Array,
  key: jax.Array,
  *,
  sched: Schedule,
  ema_decay: float,
  random_flip: bool,
  lr_schedule: optax.Schedule,
  noise_sharding=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of L_simple (DDPM Algorithm 1) plus the EMA update.

  Every random draw comes from fold_in(key, state.step), so a step is a pure function of
  (state, batch, key) and a resumed run repeats an uninterrupted one exactly.

  Args:
    state: the replicated train state.
    x0: [B, ...] data batch, split over devices.
    key: the run's training key.

  Returns:
    (new state, metrics) with scalar `loss`, `grad_norm` and `lr`.
  """
  flip_key, t_key, noise_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step), 4)
  batch = x0.shape[0]
  if random_flip and x0.ndim == 4:
    flip = jax.random.bernoulli(flip_key, 0.5, (batch,))
    x0 = jnp.where(flip[:, None, None, None], x0[:, :, ::-1, :], x0)
  t = jax.random.randint(t_key, (batch,), 0, sched.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)
  x_t = diffusion.q_sample(sched, x0, t, noise)

  def loss_fn(params):
    eps_pred = state.apply_fn({"params": params}, x_t, t, train=True, rngs={"dropout": dropout_key})
    return jnp.mean(diffusion.l_simple(noise, eps_pred))

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  new_state = state.apply_gradients(grads=grads)
  new_state = new_state.replace(
    ema_params=ema_update(state.ema_params, new_state.params, ema_decay)
  )
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr_schedule(state.step)}
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, sched: Schedule, mesh):
  """jit(train_step) for this config: state replicated and donated, batch split over 'data'."""
  step = functools.partial(
    train_step,
    sched=sched,
    ema_decay=config.training.ema_decay,
    random_flip=config.data.random_flip,
    lr_schedule=learning_rate_schedule(config.optim),
    noise_sharding=sharding.batch_sharding(mesh),
  )
  replicated = sharding.replicated(mesh)
  return jax.jit(
    step,
    in_shardings=(replicated, sharding.batch_sharding(mesh), replicated),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def abstract_train_state(config, model, example_shape, mesh):
  """The train state's shapes, dtypes and (replicated) shardings, without allocating it."""
  shapes = jax.eval_shape(
    lambda k: create_train_state(config, model, example_shape, k), jax.random.key(0)
  )
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)
