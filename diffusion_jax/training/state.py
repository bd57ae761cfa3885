"""The train state (parameters, their EMA, Adam's moments) and how it is made: from a config, or
from any Flax module and optax optimizer."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn
from flax.training import train_state

from diffusion_jax import models, sharding


class TrainState(train_state.TrainState):
  """Adds the exponential moving average of the parameters, which sampling uses by default."""

  ema_params: Any


def learning_rate_schedule(optim_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to the learning rate over warmup_steps, then constant (as DDPM), or, with
  decay_steps > 0, a cosine from the peak to 0 over decay_steps (held at 0 after)."""
  lr, warmup = optim_config.learning_rate, optim_config.warmup_steps
  decay = optim_config.decay_steps

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    rate = lr * jnp.minimum(1.0, step / warmup) if warmup > 0 else jnp.full_like(step, lr)
    if decay > 0:
      progress = jnp.clip((step - warmup) / decay, 0.0, 1.0)
      rate = rate * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return rate

  return schedule


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


def init_train_state(
  model: nn.Module, example_shape: tuple[int, ...], key: jax.Array, tx: optax.GradientTransformation
) -> TrainState:
  """Initialises params (and an EMA copy of them) for inputs of example_shape, with optimizer tx."""
  x = jnp.zeros((1, *example_shape), jnp.float32)
  t = jnp.zeros((1,), jnp.int32)
  return state_from_params(model, models.init(model, key, x, t), tx)


def state_from_params(model: nn.Module, params, tx: optax.GradientTransformation) -> TrainState:
  """A train state at step 0 holding `params`, an EMA copy of them and tx's fresh state."""
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=tx,
    # A real copy: the step donates the state, and shared buffers cannot be donated twice.
    ema_params=jax.tree.map(jnp.copy, params),
  )


def create_train_state(
  config: ml_collections.ConfigDict, model: nn.Module, example_shape: tuple[int, ...], key
) -> TrainState:
  """`init_train_state` with the optimizer of config.optim."""
  return init_train_state(model, example_shape, key, make_optimizer(config.optim))


def ema_update(ema_params, params, decay: float):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def abstract_train_state(config, model, example_shape, mesh):
  """The train state's shapes, dtypes and (replicated) shardings, without allocating it."""
  return abstract_state(lambda k: create_train_state(config, model, example_shape, k), mesh)


def abstract_state(make_state: Callable[[jax.Array], TrainState], mesh) -> TrainState:
  """The shapes, dtypes and replicated shardings of the state make_state(key) would build."""
  shapes = jax.eval_shape(make_state, jax.random.key(0))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes)
