"""Log-likelihood under the probability-flow ODE (Song et al. 2021, Appendix D.2; FFJORD).

Along dx/ds = f(x, s) (`continuous_time.pf_ode_drift`) the instantaneous change of variables gives
d log p_s(x(s)) / ds = -div f(x(s), s), so integrating [x, int div f ds] from s_min up to s = 1,
  log p_{s_min}(x) = log N(x(1); 0, I) + int_{s_min}^1 div f(x(s), s) ds.
p_{s_min} is the model's density at s_min (default 1/T, the first discrete step), and N(0, I)
stands in for its (near-Gaussian) marginal at s = 1. The integral is taken in lambda = log
alpha-bar, as int div g dlambda with g = dx/dlambda
(`continuous_time.pf_ode_drift_log_alpha_bar`), which is the same integral without beta's jumps.
The divergence is exact (one forward-mode pass per dimension) or Hutchinson's estimate
E_v[v^T (dg/dx) v] with one probe v per example held fixed along the path; the log-likelihood
estimate is then unbiased.
"""

import math

import jax
import jax.numpy as jnp

from diffusion_jax import continuous_time, ode_solvers, parametrization
from diffusion_jax.schedules import Schedule

DIVERGENCES = ("exact", "rademacher", "gaussian")


def _per_example_sum(v: jax.Array) -> jax.Array:
  """Sum over the non-batch axes of v [B, ...]; returns [B]."""
  return jnp.sum(v.reshape(v.shape[0], -1), axis=1)


def _exact_divergence(f, x: jax.Array) -> jax.Array:
  """tr(df/dx) per example for f acting examplewise on x [B, ...]: one jvp per basis vector e_d."""
  dim = math.prod(x.shape[1:])
  basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])  # e_d for every example

  def diagonal_entry(e_d):
    _, jvp = jax.jvp(f, (x,), (jnp.broadcast_to(e_d, x.shape),))
    return _per_example_sum(e_d * jvp)  # e_d^T J e_d

  return jnp.sum(jax.lax.map(diagonal_entry, basis), axis=0)


def _probe(key: jax.Array, shape: tuple[int, ...], divergence: str) -> jax.Array:
  if divergence == "rademacher":
    return jax.random.rademacher(key, shape, jnp.float32)
  if divergence == "gaussian":
    return jax.random.normal(key, shape, jnp.float32)
  raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")


def standard_normal_log_prob(x: jax.Array) -> jax.Array:
  """log N(x; 0, I) per example for x [B, ...]; returns [B]."""
  dim = math.prod(x.shape[1:])
  return -0.5 * dim * math.log(2.0 * math.pi) - 0.5 * _per_example_sum(jnp.square(x))


def log_likelihood(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  x: jax.Array,
  key: jax.Array,
  *,
  divergence: str = "rademacher",
  s_min: float | None = None,
  method: str = "adaptive",
  num_steps: int = 100,
  rtol: float = 1e-5,
  atol: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
  """log p_{s_min}(x) under the probability-flow ODE, in nats, per example.

  Args:
    model: a `parametrization.Denoiser` or a plain eps_fn(x, t), called at fractional indices
      t(s) = s T - 1 (never clipped: the likelihood is the unclipped model's).
    sched: the schedule the model was trained with.
    x: points [B, ...] at time s_min (data scaled as in training).
    key: PRNG key of the Hutchinson probes (unused by `exact`).
    divergence: `exact` (trace by D jvps, for low dimension D) or Hutchinson's estimator with
      `rademacher` or `gaussian` probes (one jvp).
    s_min: the time x lives at; default 1/T.
    method, num_steps, rtol, atol: the ODE solver (`ode_solvers.solve`), on a grid uniform in s.

  Returns:
    (log-likelihood [B] in nats, NFE: evaluations of the augmented drift, each one jvp of the
    network for Hutchinson and D of them for `exact`).
  """
  denoiser = parametrization.as_denoiser(model)
  eps_fn = lambda x_, t: denoiser(sched, x_, t).eps  # noqa: E731
  v = None if divergence == "exact" else _probe(key, x.shape, divergence)

  def augmented(state, lam):
    """[dx/dlambda, d(int div g)/dlambda] = [g(x), div g(x)] (exact or v^T (dg/dx) v)."""
    x_, _ = state
    g = lambda y: continuous_time.pf_ode_drift_log_alpha_bar(eps_fn, sched, y, lam)
    if v is None:
      return g(x_), _exact_divergence(g, x_)
    g_x, jv = jax.jvp(g, (x_,), (v,))
    return g_x, _per_example_sum(v * jv)

  state = (x, jnp.zeros((x.shape[0],), jnp.float32))
  grid = continuous_time.log_alpha_bar_grid(sched, num_steps, s_min)[::-1]  # s_min up to s = 1
  (x_1, div_integral), nfe = ode_solvers.solve(
    augmented, state, grid, method=method, rtol=rtol, atol=atol
  )
  return standard_normal_log_prob(x_1) + div_integral, nfe


def dequantize(key: jax.Array, images: jax.Array) -> jax.Array:
  """Uniform dequantization of 8-bit images [B, ...]: z = 2 (x + u) / 256 - 1, u ~ U[0, 1)^D."""
  u = jax.random.uniform(key, images.shape, jnp.float32)
  return 2.0 * (images.astype(jnp.float32) + u) / 256.0 - 1.0


def bits_per_dim(log_likelihood_z: jax.Array, dim: int) -> jax.Array:
  """Bits/dim of 8-bit data from the log-density [B] (nats) of its dequantized z in [-1, 1)^D.

  The discrete model P(x) = int_{[0,1)^D} p_y((x + u) / 256) / 256^D du with y = (z + 1) / 2, so by
  Jensen -log P(x) <= E_u[-log p_z(z)] + D log(256 / 2): z -> y has Jacobian 2^D and
  x + u -> y has 256^-D. The result, (-log p_z(z) + D log 128) / (D log 2) = -log2 p_z(z) / D + 7,
  is for one u an unbiased estimate of that upper bound on -log2 P(x) / D.
  """
  return -log_likelihood_z / (dim * math.log(2.0)) + 7.0


def image_bits_per_dim(
  model: parametrization.Denoiser | parametrization.Network,
  sched: Schedule,
  images: jax.Array,
  key: jax.Array,
  **kwargs,
) -> tuple[jax.Array, jax.Array]:
  """Bits/dim of 8-bit images [B, ...] (see `bits_per_dim`) for one dequantization draw.

  Args:
    model, sched: the model (trained on data in [-1, 1]) and its schedule.
    images: integers in 0..255, [B, ...].
    key: PRNG key of the dequantization noise and the Hutchinson probes.
    **kwargs: options of `log_likelihood`.

  Returns:
    (bits/dim [B], NFE).
  """
  dequant_key, probe_key = jax.random.split(key)
  z = dequantize(dequant_key, images)
  log_p, nfe = log_likelihood(model, sched, z, probe_key, **kwargs)
  return bits_per_dim(log_p, math.prod(images.shape[1:])), nfe
