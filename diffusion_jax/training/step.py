"""One training step (DDPM Algorithm 1, with any parametrization and loss weighting) plus the EMA
update, optionally accumulated over micro-batches, and several steps of it, or of any step
function (`jit_steps`), in one jitted call."""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import linen as nn

from diffusion_jax import losses, models, parametrization, sharding
from diffusion_jax.schedules import Schedule
from diffusion_jax.training.state import TrainState, ema_update, learning_rate_schedule


def scan_or_unroll(body: Callable, carry: Any, xs: Any) -> tuple[Any, Any]:
  """`jax.lax.scan(body, carry, xs)`, except on the CPU, where the loop is unrolled while tracing.

  XLA's CPU backend runs convolutions inside a loop (a scan, even of length 1, or its unroll=True
  form, which keeps a one-trip while loop) far slower than the same ops outside one: measured 25x
  for a training step of the digits U-Net. Unrolled, the program grows with the trip count, and so
  does its compile time.
  """
  if jax.default_backend() != "cpu":
    return jax.lax.scan(body, carry, xs)
  outs = []
  for i in range(jax.tree.leaves(xs)[0].shape[0]):
    carry, out = body(carry, jax.tree.map(lambda x, i=i: x[i], xs))
    outs.append(out)
  return carry, jax.tree.map(lambda *o: jnp.stack(o), *outs)


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
  grad_accum_steps: int = 1,
  label_dropout: float = 0.0,
  noise_sharding=None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step of the diffusion loss (`losses.diffusion_loss`) plus the EMA update.

  Every random draw comes from fold_in(key, state.step), so a step is a pure function of
  (state, batch, key) and a resumed run repeats an uninterrupted one exactly.

  With grad_accum_steps = k > 1 the forward and backward passes run over k micro-batches of
  B / k examples in turn (a `lax.scan`, so only one micro-batch's activations are alive), and
  their gradients are summed into the gradient of the whole batch's mean loss before the one
  optimizer update. The timesteps, noise and flips are drawn for the whole batch exactly as with
  k = 1, so the update is the same up to float rounding; dropout masks, drawn per micro-batch,
  are not, so with dropout > 0 it is the same in distribution only.

  Args:
    state: the replicated train state.
    x0: [B, ...] data batch, split over devices; B must divide by grad_accum_steps times the
      device count.
    key: the run's training key.
    labels: int [B] class labels for a class-conditional model, split like x0; None otherwise.
    model: the network, called as the `models` call contract says.
    kind: what it predicts.
    sched: the schedule.
    ema_decay: decay of the parameters' moving average.
    random_flip: flip images horizontally with probability 1/2.
    lr_schedule: the learning rate by step, for the logged metrics.
    weighting, min_snr_gamma, vlb_weight: the loss (see `losses`).
    grad_accum_steps: micro-batches per update.
    label_dropout: the probability that a label is replaced by the null class (the model's
      num_classes), which trains the unconditional model of classifier-free guidance.
    noise_sharding: the batch's sharding, for the noise.

  Returns:
    (new state, metrics) with scalar `loss`, `grad_norm` and, with lr_schedule, `lr`.
  """
  step_key = jax.random.fold_in(key, state.step)
  flip_key, t_key, noise_key, dropout_key = jax.random.split(step_key, 4)
  batch = x0.shape[0]
  if random_flip:
    x0 = flip_images(x0, flip_key)
  t = jax.random.randint(t_key, (batch,), 0, sched.num_timesteps)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  if noise_sharding is not None:
    noise = jax.lax.with_sharding_constraint(noise, noise_sharding)
  if labels is not None and label_dropout > 0:
    # Its own fold, so the draws of an unconditional run stay what they were.
    drop = jax.random.bernoulli(jax.random.fold_in(step_key, 4), label_dropout, labels.shape)
    labels = jnp.where(drop, models.num_classes_of(model), labels)

  def loss_fn(params, x0_M, t_M, noise_M, labels_M, micro_dropout_key):
    """The loss summed over M examples and divided by B: summed over the micro-batches, the whole
    batch's mean."""
    network = lambda x_t, timesteps: models.apply(
      model,
      params,
      x_t,
      timesteps,
      train=True,
      rngs={"dropout": micro_dropout_key},
      labels=labels_M,
    )
    loss_M = losses.diffusion_loss(
      kind.denoiser(network),
      sched,
      x0_M,
      t_M,
      noise_M,
      weighting=weighting,
      min_snr_gamma=min_snr_gamma,
      vlb_weight=vlb_weight,
    )
    return jnp.sum(loss_M) / batch

  grad_fn = jax.value_and_grad(loss_fn)
  if grad_accum_steps == 1:
    loss, grads = grad_fn(state.params, x0, t, noise, labels, dropout_key)
  else:
    k = grad_accum_steps

    def micro_batches(a_B):
      # Micro-batch i takes rows i, i + k, i + 2k, ...: as each device holds a contiguous block of
      # rows, every micro-batch is spread evenly over the devices without moving any data.
      a_MxK = a_B.reshape(batch // k, k, *a_B.shape[1:])
      if noise_sharding is None:
        return a_MxK.swapaxes(0, 1)
      # Said on both sides of the transpose: left to itself, XLA may shard the reshaped array
      # along both axes and then gather it whole to reach the layout the scan needs.
      a_MxK = jax.lax.with_sharding_constraint(a_MxK, noise_sharding)
      mesh = noise_sharding.mesh
      return jax.lax.with_sharding_constraint(a_MxK.swapaxes(0, 1), sharding.frames_sharding(mesh))

    def micro_step(micro):
      i, x0_M, t_M, noise_M, labels_M = micro
      micro_dropout_key = jax.random.fold_in(dropout_key, i)
      return grad_fn(state.params, x0_M, t_M, noise_M, labels_M, micro_dropout_key)

    def accumulate(total, micro):
      return jax.tree.map(jnp.add, total, micro_step(micro)), None

    labels_KxM = None if labels is None else micro_batches(labels)
    micros = (jnp.arange(k), micro_batches(x0), micro_batches(t), micro_batches(noise), labels_KxM)
    # Zeros in the loss's and the gradients' own dtypes, whichever the network computes in.
    zeros = jax.eval_shape(micro_step, jax.tree.map(lambda a: a[0], micros))
    (loss, grads), _ = scan_or_unroll(accumulate, jax.tree.map(jnp.zeros_like, zeros), micros)

  new_state, metrics = apply_update(state, grads, ema_decay, lr_schedule)
  return new_state, {"loss": loss, **metrics}


def flip_images(x0: jax.Array, key: jax.Array) -> jax.Array:
  """Images [B, H, W, C] each flipped horizontally with probability 1/2; other data unchanged."""
  if x0.ndim != 4:
    return x0
  return flipped(x0, jax.random.bernoulli(key, 0.5, (x0.shape[0],)))


def flipped(x0: jax.Array, flip_B: jax.Array) -> jax.Array:
  """Images [B, H, W, C], those where flip_B is true mirrored horizontally."""
  return jnp.where(flip_B[:, None, None, None], x0[:, :, ::-1, :], x0)


def apply_update(
  state: TrainState, grads, ema_decay: float, lr_schedule: optax.Schedule | None = None
) -> tuple[TrainState, dict[str, jax.Array]]:
  """The optimizer's update with grads and the EMA's; metrics `grad_norm` and, with lr_schedule,
  the step's `lr`."""
  new_state = state.apply_gradients(grads=grads)
  new_state = new_state.replace(
    ema_params=ema_update(state.ema_params, new_state.params, ema_decay)
  )
  metrics = {"grad_norm": optax.tree.norm(grads)}
  if lr_schedule is not None:
    metrics["lr"] = lr_schedule(state.step)
  return new_state, metrics


def _step_kwargs(config: ml_collections.ConfigDict, model: nn.Module, sched: Schedule, mesh):
  """`train_step`'s keyword arguments for this config."""
  return dict(
    model=model,
    kind=models.parametrization_of(config.model),
    sched=sched,
    ema_decay=config.training.ema_decay,
    random_flip=config.data.random_flip,
    lr_schedule=learning_rate_schedule(config.optim),
    weighting=config.training.loss_weighting,
    min_snr_gamma=config.training.min_snr_gamma,
    vlb_weight=config.training.vlb_weight,
    grad_accum_steps=config.training.grad_accum_steps,
    label_dropout=config.training.label_dropout,
    noise_sharding=sharding.batch_sharding(mesh),
  )


def _jit_for_mesh(steps, labeled: bool, mesh, batch_sharding, with_frozen: bool = False):
  """jit with the state replicated and donated, the key replicated, the images and any labels (a
  class-conditional model's, the last argument) split as batch_sharding says, and with_frozen a
  replicated fourth argument before the labels."""
  replicated = sharding.replicated(mesh)
  in_shardings = (replicated, batch_sharding, replicated)
  if with_frozen:
    in_shardings += (replicated,)
  if labeled:
    in_shardings += (batch_sharding,)
  return jax.jit(
    steps, in_shardings=in_shardings, out_shardings=(replicated, replicated), donate_argnums=0
  )


def make_train_step(config: ml_collections.ConfigDict, model: nn.Module, sched: Schedule, mesh):
  """jit(train_step) for this config, called step(state, x0 [B, ...], key[, labels [B]]) with
  the batch split over 'data' (labels for a class-conditional model: models.num_classes_of > 0)."""
  step = functools.partial(train_step, **_step_kwargs(config, model, sched, mesh))
  return _jit_for_mesh(step, models.num_classes_of(model) > 0, mesh, sharding.batch_sharding(mesh))


def make_train_steps(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  sched: Schedule,
  mesh,
  latents_of: Callable | None = None,
  frozen: Any = None,
):
  """`jit_steps` of this config's train_step: steps(state, x0 [N, B, ...], key[, labels [N, B]]).

  Latent diffusion: each step trains on latents_of(frozen, x0, flip_B) instead of x0, where flip_B
  (bool [B], None unless data.random_flip) says which examples to mirror, and frozen (the encoder's
  params, say) is an argument of the program rather than constants compiled into it.
  """
  if (latents_of is None) != (frozen is None):
    raise ValueError("make_train_steps takes latents_of and frozen together, or neither")
  kwargs = _step_kwargs(config, model, sched, mesh)
  labeled = models.num_classes_of(model) > 0
  if latents_of is None:
    return jit_steps(functools.partial(train_step, **kwargs), mesh, labeled=labeled)
  flip, kwargs["random_flip"] = kwargs["random_flip"], False
  step = _on_latents(functools.partial(train_step, **kwargs), latents_of, flip)
  return jit_steps(step, mesh, labeled=labeled, frozen=frozen)


def _on_latents(step: Callable, latents_of: Callable, random_flip: bool):
  """step(state, latents_of(frozen, x0, flip_B), key[, labels]) as a step of frozen; flip_B comes
  from a key of its own (mirroring a latent is not mirroring its image)."""

  def latent_step(state, x0, key, frozen, *labels):
    flip_B = None
    if random_flip:
      flip_key = jax.random.fold_in(jax.random.fold_in(key, state.step), 5)
      flip_B = jax.random.bernoulli(flip_key, 0.5, (x0.shape[0],))
    return step(state, latents_of(frozen, x0, flip_B), key, *labels)

  return latent_step


def jit_steps(step: Callable, mesh, *, labeled: bool = False, frozen: Any = None) -> Callable:
  """N consecutive steps of any step(state, x0 [B, ...], key[, labels [B]]) -> (state, metrics)
  as one jitted program: steps(state, x0 [N, B, ...], key[, labels [N, B]]) -> (the state after
  N steps, each metric stacked to [N]), the state replicated and donated, the batches split over
  'data' along B. Each step draws from fold_in(key, its step), so N changes the speed only.

  The N steps run in one `lax.scan`, compiled once for each N. On the CPU they run instead as N
  calls of the one-step program: XLA's CPU backend runs convolutions inside a loop far slower than
  outside one (25x for the digits U-Net), and an unrolled program rounds differently from a lone
  step, which would break exact resume. The CPU loses nothing by it, as it is not kept waiting on
  Python between steps.

  Args:
    step: one step; labeled: whether it takes labels.
    mesh: the devices.
    frozen: a pytree the step reads and does not train; when given, the step is
      step(state, x0, key, frozen[, labels]), and frozen goes into the program, replicated, as an
      argument (large arrays compiled in as constants make compiling slow).
  """
  with_frozen = frozen is not None
  fixed_count = int(with_frozen)
  if jax.default_backend() == "cpu":
    one_step = _jit_for_mesh(step, labeled, mesh, sharding.batch_sharding(mesh), with_frozen)

    def program(state, x0_NxB, key, *rest):
      fixed, labels_NxB = rest[:fixed_count], rest[fixed_count:]
      metrics = []
      for i in range(x0_NxB.shape[0]):
        state, step_metrics = one_step(state, x0_NxB[i], key, *fixed, *(y[i] for y in labels_NxB))
        metrics.append(step_metrics)
      return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

  else:

    def scanned(state, x0_NxB, key, *rest):
      fixed, labels_NxB = rest[:fixed_count], rest[fixed_count:]
      one = lambda s, x0, k, *labels: step(s, x0, k, *fixed, *labels)
      return scan_steps(one, state, x0_NxB, key, *labels_NxB)

    program = _jit_for_mesh(scanned, labeled, mesh, sharding.frames_sharding(mesh), with_frozen)
  if not with_frozen:
    return program
  return lambda state, x0_NxB, key, *labels_NxB: program(state, x0_NxB, key, frozen, *labels_NxB)


def scan_steps(step: Callable, state, x0_NxB: jax.Array, key: jax.Array, *labels_NxB: jax.Array):
  """N consecutive step(state, x0, key[, labels]) in one `lax.scan`: (the state after N steps,
  each metric stacked to [N])."""

  def body(s, batch):
    x0, *labels = batch
    return step(s, x0, key, *labels)

  return jax.lax.scan(body, state, (x0_NxB, *labels_NxB))
