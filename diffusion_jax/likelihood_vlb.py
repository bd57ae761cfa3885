"""The DDPM variational bound on the negative log-likelihood, in bits per dimension.

Ho et al. (2020), eq. 5 (after Sohl-Dickstein et al. 2015): for each example x0,

  -log p(x0) <= E_q[L],  L = L_T + sum_{t=2..T} L_{t-1} + L_0, where
  L_T     = KL(q(x_T | x0) || N(0, I)),
  L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)),
  L_0     = -log p(x0 | x1), the decoder (eq. 13 for 8-bit data, or a Gaussian density),
each term with its own draw x_t ~ q(x_t | x0), so L is an unbiased one-sample estimate of E_q[L].

In timestep indices (see `schedules`), the term at index t >= 1 is the KL at the paper's step t+1
and the term at index 0 is L_0. Bits per dimension are nats / (D ln 2), D the data's dimension.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.scipy.special import log_ndtr

from diffusion_jax import diffusion, sharding
from diffusion_jax.sampling import EpsFn
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


@flax.struct.dataclass
class VLBTerms:
  """The bound's terms per example, in bits per dimension; total = L_T + sum_t L_{t-1} + L_0."""

  prior_bpd: jax.Array  # [B], L_T
  terms_bpd: jax.Array  # [B, T]: index 0 is L_0, index t >= 1 is L_t (the KL at paper step t+1)
  total_bpd: jax.Array  # [B]


def vlb_terms(
  eps_fn: EpsFn,
  sched: Schedule,
  x0: jax.Array,
  key: jax.Array,
  *,
  variance: str = "fixedlarge",
  clip_x0: bool = False,
  decoder: str = "discretized",
) -> VLBTerms:
  """Every term of the variational bound (eq. 5) per example, the T network calls in one lax.map.

  Args:
    eps_fn: the noise predictor eps_fn(x_t, t).
    sched: the schedule the model was trained with.
    x0: data [B, ...]; on the 8-bit grid in [-1, 1] for the discretized decoder.
    key: PRNG key; the term at index t draws x_t ~ q(x_t | x0) from fold_in(key, t).
    variance: `fixedlarge` or `fixedsmall` reverse variance sigma_t^2 (see diffusion).
    clip_x0: clip the predicted x0 to [-1, 1] inside p(x_{t-1} | x_t), as when sampling.
    decoder: `discretized` (eq. 13, for 8-bit data: the bound is on a probability) or `gaussian`
      (a density N(x0; mu(x1, 1), beta_1), for continuous data).

  Returns:
    VLBTerms with prior_bpd [B], terms_bpd [B, T] and total_bpd [B].
  """
  if decoder not in DECODERS:
    raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
  log_likelihood = (
    discretized_gaussian_log_likelihood if decoder == "discretized" else gaussian_log_likelihood
  )
  batch = x0.shape[0]
  num_dims = math.prod(x0.shape[1:])

  def decoder_log_scale(p_log_var: jax.Array) -> jax.Array:
    if decoder == "gaussian":
      # sigma_1^2 = beta_1, the true reverse variance of the first step for continuous data;
      # beta-tilde_2 ~ beta_1 / 2 would cost (1 - ln 2) / 2 nats per dimension however large T is.
      return jnp.broadcast_to(0.5 * jnp.log(sched.betas[0]), p_log_var.shape)
    return 0.5 * p_log_var

  def sum_dims(v: jax.Array) -> jax.Array:
    return v.reshape(batch, -1).sum(axis=1)

  def term(t: jax.Array) -> jax.Array:
    t_B = jnp.full((batch,), t, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    x_t = diffusion.q_sample(sched, x0, t_B, noise)
    q_mean, _, q_log_var = diffusion.q_posterior_mean_variance(sched, x0, x_t, t_B)
    p_mean, _, p_log_var, _ = diffusion.p_mean_variance(
      sched, eps_fn(x_t, t_B), x_t, t_B, variance=variance, clip_x0=clip_x0
    )
    kl = sum_dims(normal_kl(q_mean, q_log_var, p_mean, p_log_var))  # L_{t-1}, eq. 5
    nll = -sum_dims(log_likelihood(x0, p_mean, decoder_log_scale(p_log_var)))  # L_0, eq. 5
    return jnp.where(t == 0, nll, kl)

  terms_TB = jax.lax.map(term, jnp.arange(sched.num_timesteps, dtype=jnp.int32))
  last_B = jnp.full((batch,), sched.num_timesteps - 1, jnp.int32)
  mean_T, _, log_var_T = diffusion.q_mean_variance(sched, x0, last_B)
  prior_B = sum_dims(normal_kl(mean_T, log_var_T, 0.0, 0.0))  # L_T, eq. 5
  terms_BT = terms_TB.T
  return VLBTerms(
    prior_bpd=nats_to_bpd(prior_B, num_dims),
    terms_bpd=nats_to_bpd(terms_BT, num_dims),
    total_bpd=nats_to_bpd(prior_B + terms_BT.sum(axis=1), num_dims),
  )


@dataclasses.dataclass(frozen=True)
class VLBSummary:
  """Means over the evaluated examples, in bits per dimension."""

  total_bpd: float  # the bound on -log p(x0) / (D ln 2)
  total_bpd_stderr: float  # standard error of that mean over examples
  prior_bpd: float  # L_T
  terms_bpd: np.ndarray  # [T], index t as in VLBTerms
  num_examples: int
  num_network_evals: int  # T per example


@functools.partial(jax.jit, static_argnames=("apply_fn", "variance", "clip_x0", "decoder"))
def _batch_terms(params, sched, x0, key, *, apply_fn, variance, clip_x0, decoder):
  eps_fn = lambda x, t: apply_fn(params, x, t)
  return vlb_terms(eps_fn, sched, x0, key, variance=variance, clip_x0=clip_x0, decoder=decoder)


def evaluate_vlb(
  apply_fn: Callable[[Any, jax.Array, jax.Array], jax.Array],
  params: Any,
  sched: Schedule,
  batches: Iterable[np.ndarray],
  key: jax.Array,
  *,
  variance: str = "fixedlarge",
  clip_x0: bool = False,
  decoder: str = "discretized",
  num_examples: int | None = None,
  mesh=None,
  progress: bool = True,
) -> VLBSummary:
  """Averages the bound over a dataset in one process; batch i uses fold_in(key, i).

  Args:
    apply_fn: the network as apply_fn(params, x_t, t) -> eps.
    params: its parameters.
    sched: the schedule it was trained with.
    batches: data batches [<= B, ...]; each is padded to a multiple of the device count.
    key: PRNG key.
    variance: reverse variance, as in vlb_terms.
    clip_x0: as in vlb_terms.
    decoder: as in vlb_terms.
    num_examples: stop after this many examples (default: all of `batches`).
    mesh: the ('data',) mesh to split batches over (default: every device).
    progress: show a progress bar.

  Returns:
    VLBSummary of means over the examples evaluated.
  """
  mesh = mesh or sharding.data_mesh()
  fn = functools.partial(
    _batch_terms, apply_fn=apply_fn, variance=variance, clip_x0=clip_x0, decoder=decoder
  )
  num_timesteps = sched.num_timesteps
  seen, padded = 0, 0
  total_sum, total_sq, prior_sum, terms_sum = 0.0, 0.0, 0.0, np.zeros(num_timesteps)
  bar = tqdm.tqdm(total=num_examples, desc="vlb", unit="example", disable=not progress)
  for i, batch in enumerate(batches):
    batch = batch if num_examples is None else batch[: num_examples - seen]
    n = len(batch)
    if n == 0:
      break
    # Padding to the largest batch so far keeps one compilation for a shorter last batch.
    padded = max(padded, -(-n // mesh.size) * mesh.size)
    x0 = np.concatenate([batch, np.repeat(batch[-1:], padded - n, axis=0)])
    terms = jax.device_get(
      fn(params, sched, sharding.shard_batch(x0, mesh), jax.random.fold_in(key, i))
    )
    total = np.asarray(terms.total_bpd[:n], np.float64)
    total_sum += total.sum()
    total_sq += np.square(total).sum()
    prior_sum += np.asarray(terms.prior_bpd[:n], np.float64).sum()
    terms_sum += np.asarray(terms.terms_bpd[:n], np.float64).sum(axis=0)
    seen += n
    bar.update(n)
    bar.set_postfix(bpd=f"{total_sum / seen:.4f}")
  bar.close()
  if seen == 0:
    raise ValueError("no examples to evaluate")
  mean = float(total_sum / seen)
  variance_of_mean = max(float(total_sq / seen) - mean**2, 0.0) / max(seen - 1, 1)
  return VLBSummary(
    total_bpd=mean,
    total_bpd_stderr=math.sqrt(variance_of_mean),
    prior_bpd=float(prior_sum / seen),
    terms_bpd=terms_sum / seen,
    num_examples=seen,
    num_network_evals=seen * num_timesteps,
  )
