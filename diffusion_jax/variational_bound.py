"""The terms of the DDPM variational bound on the negative log-likelihood (Ho et al. 2020, eq. 5).

For each example x0, -log p(x0) <= L = L_T + sum_{t=2..T} L_{t-1} + L_0 with
  L_T     = KL(q(x_T | x0) || N(0, I)),
  L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),
  L_0     = -log p(x0 | x1), the decoder (eq. 13 for 8-bit data, or a Gaussian density),
each with its own x_t ~ q(x_t | x0). In timestep indices (see `schedules`) the term at index t >= 1
is the KL at the paper's step t+1, and the term at index 0 is L_0. `likelihood.vlb` sums them over
a dataset; the training loss draws one at a random t (`losses`).
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from diffusion_jax import diffusion, parametrization
from diffusion_jax.schedules import Schedule

DECODERS = ("discretized", "gaussian")
# Bin probabilities are floored at 1e-12, as in the DDPM code, so one hopeless pixel costs at most
# 27.6 nats instead of an infinite bound.
_LOG_MIN_PROB = math.log(1e-12)


def normal_kl(
  mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array
) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise in nats; inputs broadcast."""
  # 0.5 [log(v2 / v1) + v1 / v2 - 1 + (m1 - m2)^2 / v2]; expm1 keeps near-equal variances accurate.
  d = logvar1 - logvar2
  return 0.5 * (jnp.expm1(d) - d + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _log1mexp(a: jax.Array) -> jax.Array:
  """log(1 - exp(a)) for a <= 0, accurate for a near 0 and for a very negative."""
  return jnp.where(a > -math.log(2.0), jnp.log(-jnp.expm1(a)), jnp.log1p(-jnp.exp(a)))


def _log_ndtr_diff(lo: jax.Array, hi: jax.Array) -> jax.Array:
  """log(Phi(hi) - Phi(lo)) for lo < hi, without cancellation in either tail."""
  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): reflect bins right of 0 into the left tail, where both
  # CDFs are small and log_ndtr keeps their relative difference.
  right = lo + hi > 0
  lo, hi = jnp.where(right, -hi, lo), jnp.where(right, -lo, hi)
  log_hi = log_ndtr(hi)
  return log_hi + _log1mexp(log_ndtr(lo) - log_hi)


def discretized_gaussian_log_likelihood(
  x: jax.Array, means: jax.Array, log_scales: jax.Array
) -> jax.Array:
  """log P(x) of 8-bit data under a Gaussian integrated over x's bin, DDPM eq. 13.

  Args:
    x: data on the 8-bit grid {-1, -1 + 2/255, ..., 1}, any shape.
    means: the Gaussian's means, broadcasting against x.
    log_scales: log standard deviations, broadcasting against x.

  Returns:
    Log-probabilities in nats, elementwise: bins have width 2/255, the edge bins reach -inf and
    +inf, and each probability is floored at 1e-12.
  """
  inv_scale = jnp.exp(-log_scales)
  lo = (x - means - 1.0 / 255) * inv_scale
  hi = (x - means + 1.0 / 255) * inv_scale
  # delta_-(x) = -inf at x = -1 and delta_+(x) = +inf at x = 1, eq. 13; 1 - Phi(lo) = Phi(-lo).
  log_probs = jnp.where(
    x < -0.999, log_ndtr(hi), jnp.where(x > 0.999, log_ndtr(-lo), _log_ndtr_diff(lo, hi))
  )
  return jnp.maximum(log_probs, _LOG_MIN_PROB)


def gaussian_log_likelihood(x: jax.Array, means: jax.Array, log_scales: jax.Array) -> jax.Array:
  """log N(x; means, exp(log_scales)^2) elementwise in nats: a density, for continuous data."""
  z = (x - means) * jnp.exp(-log_scales)
  return -0.5 * (math.log(2 * math.pi) + jnp.square(z)) - log_scales


def nats_to_bpd(nats: jax.Array, num_dims: int) -> jax.Array:
  """Converts a per-example negative log-likelihood in nats to bits per dimension: / (D ln 2)."""
  return nats / (num_dims * math.log(2.0))


def default_decoder(x0: jax.Array) -> str:
  """`discretized` for images [B, H, W, C] (8-bit data in [-1, 1]), `gaussian` for vectors."""
  return "discretized" if x0.ndim == 4 else "gaussian"


def prior_term(sched: Schedule, x0: jax.Array) -> jax.Array:
  """L_T = KL(q(x_T | x0) || N(0, I)) per example, in nats, [B]."""
  last_B = jnp.full((x0.shape[0],), sched.num_timesteps - 1, jnp.int32)
  mean, _, log_var = diffusion.q_mean_variance(sched, x0, last_B)
  return _sum_dims(normal_kl(mean, log_var, 0.0, 0.0))


def term(
  sched: Schedule,
  denoised: parametrization.Denoised,
  x0: jax.Array,
  t_B: jax.Array,
  *,
  variance: str,
  decoder: str,
) -> jax.Array:
  """The bound's term at int timesteps t [B] (L_{t-1} for t >= 1, L_0 at t = 0), in nats, [B].

  Args:
    sched: the schedule.
    denoised: the network's reading of x_t = denoised.x_t (with x0 clipped if it should be).
    x0: the data [B, ...].
    t_B: the timesteps x_t was drawn at.
    variance: the reverse variance, `fixedlarge`, `fixedsmall` or `learned` (see
      `diffusion.p_mean_variance`).
    decoder: `discretized` (eq. 13, a probability of 8-bit data) or `gaussian` (a density for
      continuous data, N(x0; mu(x1, 1), sigma_1^2) with sigma_1^2 = beta_1 unless learned).
  """
  if decoder not in DECODERS:
    raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
  x_t = denoised.x_t
  q_mean, _, q_log_var = diffusion.q_posterior_mean_variance(sched, x0, x_t, t_B)
  p_mean, _, p_log_var = diffusion.p_mean_variance(
    sched, denoised.x0, x_t, t_B, variance=variance, variance_fraction=denoised.variance_fraction
  )
  kl = _sum_dims(normal_kl(q_mean, q_log_var, p_mean, p_log_var))  # L_{t-1}, eq. 5
  if decoder == "discretized":
    nll = -_sum_dims(discretized_gaussian_log_likelihood(x0, p_mean, 0.5 * p_log_var))
  else:
    # sigma_1^2 = beta_1, the true reverse variance of the first step for continuous data;
    # beta-tilde_2 ~ beta_1 / 2 would cost (1 - ln 2) / 2 nats per dimension however large T is.
    log_scale = 0.5 * p_log_var if variance == "learned" else 0.5 * jnp.log(sched.betas[0])
    nll = -_sum_dims(gaussian_log_likelihood(x0, p_mean, jnp.broadcast_to(log_scale, x0.shape)))
  return jnp.where(t_B == 0, nll, kl)  # L_0, eq. 5


def _sum_dims(v: jax.Array) -> jax.Array:
  return v.reshape(v.shape[0], -1).sum(axis=1)
