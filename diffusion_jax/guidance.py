"""Guidance as wrappers of a network: classifier-free (Ho & Salimans 2022) and classifier guidance
(Dhariwal & Nichol 2021). Every sampler then runs on the wrapped network unchanged, but for
ancestral sampling with classifier guidance, which moves the step's mean instead.

A conditional network is network_y(x_t [B, ...], t [B], y [B]) with int labels y in 0..K-1, or K,
the null class, which a network trained with label dropout reads as "no label".

Classifier-free guidance with scale w (Ho & Salimans 2022, eq. 6):

  eps~(x_t, c) = (1 + w) eps(x_t, c) - w eps(x_t, null),

i.e. the score of p_t(x | c)^(1 + w) / p_t(x)^w: w = 0 is the conditional model, larger w trades
diversity for fidelity. The conversions between eps, x0 and v are affine in the network's output
with a fixed coefficient on x_t (`parametrization.eps_and_x0`), so mixing outputs with weights
(1 + w, -w), which sum to 1, mixes eps, x0 and v alike: guidance is the same for every
parametrization. A learned variance is read from the conditional half alone.

Classifier guidance with scale s (Dhariwal & Nichol 2021) follows g = s grad_x log p_t(y | x_t)
(`classifier_gradient`). Ancestral sampling adds it to each step's mean (Algorithm 1):

  x_{t-1} ~ N(mu + Sigma g, Sigma),

Sigma the step's variance (`samplers.ancestral`). The other samplers take it as a shift of eps
(Algorithm 2, and sec. 4.2's score view; `eps_guided`):

  eps^(x_t) = eps(x_t) - sigma_t g,

the score of p_t(x) p_t(y | x)^s; at s = 1 that is p_t(x | y), the conditional model exactly.
`samplers.sample(..., guidance_gradient=g)` applies the form that fits its sampler.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, parametrization
from diffusion_jax.schedules import Schedule

# network_y(x_t [B, ...], t [B], y [B] int) -> output (x_t's shape, or twice its channels)
ConditionalNetwork = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# log_prob(x_t [B, ...], t [B], y [B]) -> log p_t(y | x_t) [B]
ClassifierLogProb = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
# gradient(x_t [B, ...], t [B]) -> g = s grad_x log p_t(y | x_t), x_t's shape
Gradient = Callable[[jax.Array, jax.Array], jax.Array]


def with_labels(network_y: ConditionalNetwork, labels: jax.Array) -> parametrization.Network:
  """network(x_t, t) = network_y(x_t, t, labels): the conditional model of fixed labels [B]."""
  return lambda x_t, t_B: network_y(x_t, t_B, jnp.asarray(labels))


def classifier_free(
  network_y: ConditionalNetwork,
  labels: jax.Array,
  null_label: int,
  scale: float,
  *,
  learned_variance: bool = False,
) -> parametrization.Network:
  """The guided network (1 + w) out(x_t, c) - w out(x_t, null), both halves in one call of 2B.

  Args:
    network_y: the conditional network.
    labels: int [B] class labels c.
    null_label: the null class (the number of classes K).
    scale: w >= 0.
    learned_variance: the output's second half of channels is a variance, taken from out(x_t, c).

  Returns:
    network(x_t [B, ...], t [B]) -> the guided output.
  """
  labels = jnp.asarray(labels)

  def network(x_t: jax.Array, t_B: jax.Array) -> jax.Array:
    batch = x_t.shape[0]
    y_2B = jnp.concatenate([labels, jnp.full((batch,), null_label, labels.dtype)])
    out = network_y(jnp.concatenate([x_t, x_t]), jnp.concatenate([t_B, t_B]), y_2B)
    cond, uncond = out[:batch], out[batch:]
    variance = None
    if learned_variance:
      cond, variance = jnp.split(cond, 2, axis=-1)
      uncond = jnp.split(uncond, 2, axis=-1)[0]
    guided = (1.0 + scale) * cond - scale * uncond
    return guided if variance is None else jnp.concatenate([guided, variance], axis=-1)

  return network


def classifier_gradient(log_prob: ClassifierLogProb, labels: jax.Array, scale: float) -> Gradient:
  """g(x_t, t) = s grad_x log p_t(y | x_t) towards fixed labels y [B] (Algorithms 1 and 2)."""
  labels = jnp.asarray(labels)
  grad_log_prob = jax.grad(lambda x, t: jnp.sum(log_prob(x, t, labels)))
  return lambda x_t, t_B: scale * grad_log_prob(x_t, t_B)


def eps_guided(
  denoiser: parametrization.Denoiser, sched: Schedule, gradient: Gradient
) -> parametrization.Denoiser:
  """The denoiser whose eps is shifted by -sigma_t g(x_t, t) (Algorithm 2; module docstring).

  Args:
    denoiser: the (unconditional or conditional) model, any parametrization.
    sched: its schedule (t may be an int index or continuous float time).
    gradient: g, e.g. `classifier_gradient`.

  Returns:
    A Denoiser of the same parametrization whose output carries the guided eps.
  """

  def network(x_t: jax.Array, t_B: jax.Array) -> jax.Array:
    out = denoiser.output(x_t, t_B)
    variance = None
    if denoiser.learned_variance:
      out, variance = jnp.split(out, 2, axis=-1)
    alpha, sigma = diffusion.noise_level(sched, t_B, x_t)
    eps, _ = parametrization.eps_and_x0(denoiser.prediction, out, x_t, alpha, sigma)
    eps = eps - sigma * gradient(x_t, t_B)
    x0 = (x_t - sigma * eps) / alpha
    guided = parametrization.training_target(denoiser.prediction, x0, eps, alpha, sigma)
    return guided if variance is None else jnp.concatenate([guided, variance], axis=-1)

  return parametrization.Denoiser(network, denoiser.prediction, denoiser.learned_variance)


def classifier_guided(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  log_prob: ClassifierLogProb,
  labels: jax.Array,
  scale: float,
) -> parametrization.Denoiser:
  """`eps_guided` by the classifier's g = s grad log p_t(y | x_t) towards labels y [B]."""
  return eps_guided(denoiser, sched, classifier_gradient(log_prob, labels, scale))
