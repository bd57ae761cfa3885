"""Training objectives of a denoiser: L_simple, its weightings, and L_hybrid for learned variances.

x_t = alpha_t x0 + sigma_t eps with t ~ U{0..T-1} and eps ~ N(0, I) (DDPM Algorithm 1). The
regression part is the mean squared error between the network's prediction and its target (eps,
x0 or v; `parametrization.training_target`) over the dimensions of each example, weighted by w(t):

  simple   w = 1: L_simple (eq. 14) for eps prediction, the plain MSE on x0 or v otherwise.
  min_snr  min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR in eps units, SNR =
           alpha^2 / sigma^2, i.e. w = min(SNR, gamma) / SNR on eps, min(SNR, gamma) on x0 and
           min(SNR, gamma) / (SNR + 1) on v.
  vlb      the variational bound itself: T times its term at t (`variational_bound.term`), in bits
           per dimension, an unbiased estimate of the whole bound (eq. 5).

With a learned variance, `simple` and `min_snr` become L_hybrid = L + lambda L_vlb (Nichol &
Dhariwal 2021, sec. 3.1, lambda = 0.001), where L_vlb's mean is held fixed (stop-gradient) so the
bound trains only the variance and the regression term the mean.
"""

import math

import jax
import jax.numpy as jnp

from diffusion_jax import diffusion, parametrization, variational_bound
from diffusion_jax.schedules import Schedule

WEIGHTINGS = ("simple", "min_snr", "vlb")


def mean_squared_error(target: jax.Array, pred: jax.Array) -> jax.Array:
  """Per example, the mean over all non-batch axes of (target - pred)^2, shape [B] (eq. 14)."""
  sq = jnp.square(target - pred)
  return jnp.mean(sq.reshape(sq.shape[0], -1), axis=1)


def min_snr_weight(prediction: str, snr: jax.Array, gamma: float) -> jax.Array:
  """The min-SNR-gamma weight on the MSE of `prediction`'s target, for per-example SNRs."""
  clipped = jnp.minimum(snr, gamma)
  if prediction == "eps":
    return clipped / snr
  if prediction == "x0":
    return clipped
  if prediction == "v":
    return clipped / (snr + 1.0)
  raise ValueError(f"unknown prediction {prediction!r}")


def vlb_bits_per_dim(
  sched: Schedule,
  denoised: parametrization.Denoised,
  x0: jax.Array,
  t_B: jax.Array,
  variance: str,
) -> jax.Array:
  """T times the bound's term at t, in bits per dimension [B]: E_t of it is the whole bound
  without L_T, which does not depend on the network."""
  nats = variational_bound.term(
    sched,
    denoised,
    x0,
    t_B,
    variance=variance,
    decoder=variational_bound.default_decoder(x0),
  )
  return sched.num_timesteps * nats / (math.prod(x0.shape[1:]) * math.log(2.0))


def diffusion_loss(
  denoiser: parametrization.Denoiser,
  sched: Schedule,
  x0: jax.Array,
  t_B: jax.Array,
  noise: jax.Array,
  *,
  weighting: str = "simple",
  min_snr_gamma: float = 5.0,
  vlb_weight: float = 0.001,
) -> jax.Array:
  """The training loss per example, [B].

  Args:
    denoiser: the model (in training mode, with its dropout key bound).
    sched: the schedule.
    x0: data [B, ...].
    t_B: int32 timesteps, uniform in 0..T-1.
    noise: eps ~ N(0, I), x0's shape.
    weighting: `simple`, `min_snr` or `vlb` (see the module docstring).
    min_snr_gamma: gamma of `min_snr`.
    vlb_weight: lambda of L_hybrid (learned variance only).
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
  x_t = diffusion.q_sample(sched, x0, t_B, noise)
  denoised = denoiser(sched, x_t, t_B)
  variance = "learned" if denoiser.learned_variance else "fixedlarge"
  if weighting == "vlb":
    return vlb_bits_per_dim(sched, denoised, x0, t_B, variance)
  target = parametrization.training_target(
    denoiser.prediction, x0, noise, denoised.alpha, denoised.sigma
  )
  prediction = {"eps": denoised.eps, "x0": denoised.x0, "v": denoised.v}[denoiser.prediction]
  loss = mean_squared_error(target, prediction)
  if weighting == "min_snr":
    snr = jnp.square(denoised.alpha / denoised.sigma).reshape(-1)
    loss = min_snr_weight(denoiser.prediction, snr, min_snr_gamma) * loss
  if denoiser.learned_variance:
    held = denoised.replace(
      eps=jax.lax.stop_gradient(denoised.eps), x0=jax.lax.stop_gradient(denoised.x0)
    )
    loss = loss + vlb_weight * vlb_bits_per_dim(sched, held, x0, t_B, variance)
  return loss
