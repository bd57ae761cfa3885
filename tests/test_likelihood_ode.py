"""Probability-flow ODE log-likelihoods with the exact Gaussian-mixture oracle, whose true density
q_{s_min} is known in closed form; and the bits/dim bookkeeping of 8-bit data."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import continuous_time, oracles, schedules
from diffusion_jax.likelihood import ode as likelihood_ode

MIX = oracles.GaussianMixture(
  weights=jnp.array([0.2, 0.5, 0.3]),
  means=jnp.array([[-1.0, 0.0], [1.0, 1.0], [0.5, -1.0]]),
  variances=jnp.array([0.04, 0.09, 0.02]),
)
# alpha-bar(1) ~ 1e-9 makes N(0, I) the marginal at s = 1 to ~1e-4 nats: what is left is the solver.
COSINE = schedules.make_schedule(schedules.get_beta_schedule("cosine", 1000))


@functools.partial(jax.jit, static_argnames="divergence")
def _log_likelihood(mix, sched, x, key, s_min, divergence):
  eps_fn = oracles.eps_fn_for(mix, sched)
  return likelihood_ode.log_likelihood(eps_fn, sched, x, key, divergence=divergence, s_min=s_min)


@jax.jit
def _true_log_prob(mix, sched, x, s):
  return mix.log_prob_t(x, continuous_time.alpha_bar(sched, s))


def _points() -> jax.Array:
  """Mixture samples and a few points in the tails and between the components."""
  tails = jnp.array([[2.0, 2.0], [-2.0, -1.0], [0.0, 0.0], [0.0, 0.5]])
  return jnp.concatenate([MIX.sample(jax.random.key(0), 60), tails])


@pytest.mark.parametrize("s_min", [1e-3, 1e-4])  # the default 1/T, and closer to the data
def test_exact_trace_matches_the_true_log_density(s_min):
  x = _points()
  log_p, nfe = _log_likelihood(MIX, COSINE, x, jax.random.key(1), s_min, "exact")
  np.testing.assert_allclose(log_p, _true_log_prob(MIX, COSINE, x, s_min), atol=5e-4)
  assert (int(nfe) - 1) % 6 == 0 and int(nfe) > 7
  if s_min < 1e-3:  # then q_{s_min} is the data density q_0 up to ~1e-3 nats (more in the tails)
    gap = np.abs(np.asarray(log_p - MIX.log_prob(x)))
    assert np.median(gap) < 2e-4 and np.max(gap) < 1e-2


def test_hutchinson_is_unbiased_and_rademacher_has_less_variance():
  """Each of 8 points gets 64 probes (rows of one batch); the probe mean matches the exact value
  to 5 standard errors (plus the solver's error), for Rademacher and Gaussian probes. Rademacher's
  variance 2 sum_{i != j} M_ij^2 is below Gaussian's 2 sum_ij M_ij^2 (M the symmetrised integral
  of the Jacobian along the path)."""
  x, probes, s_min = _points()[56:64], 64, 1e-3
  truth = np.asarray(_true_log_prob(MIX, COSINE, x, s_min))
  variances = {}
  for divergence in ("rademacher", "gaussian"):
    log_p, _ = _log_likelihood(
      MIX, COSINE, jnp.repeat(x, probes, axis=0), jax.random.key(2), s_min, divergence
    )
    log_p = np.asarray(log_p, np.float64).reshape(8, probes)
    se = log_p.std(axis=1) / math.sqrt(probes)
    np.testing.assert_array_less(np.abs(log_p.mean(axis=1) - truth), 5 * se + 1e-3)
    assert np.all(se > 0)  # the probes did differ
    variances[divergence] = log_p.var(axis=1)
  assert np.mean(variances["rademacher"]) < np.mean(variances["gaussian"])


def test_bits_per_dim_by_hand():
  """A density uniform on [-1, 1)^D (log p = -D log 2) gives 8 bits/dim: uniform over the 256
  levels. In general bits/dim = (-log p_z - D log 2 + D log 256) / (D log 2)."""
  dim = 3072
  np.testing.assert_allclose(likelihood_ode.bits_per_dim(jnp.array([-dim * math.log(2)]), dim), 8.0)
  log_p = jnp.array([-5000.0, 1234.5])
  by_hand = (-np.asarray(log_p) - dim * math.log(2) + dim * math.log(256)) / (dim * math.log(2))
  np.testing.assert_allclose(likelihood_ode.bits_per_dim(log_p, dim), by_hand, rtol=1e-6)


def test_dequantize_stays_in_each_pixels_bin():
  images = jnp.arange(256, dtype=jnp.uint8).reshape(4, 8, 8, 1)
  z = np.asarray(jax.jit(likelihood_ode.dequantize)(jax.random.key(3), images))
  assert np.all((z >= -1.0) & (z < 1.0))
  np.testing.assert_array_equal(np.floor((z + 1.0) * 128.0), np.asarray(images))


def test_image_bits_per_dim_is_the_dequantized_log_likelihood():
  """2x2 'images' under a one-component oracle in R^4: bits/dim = -log2 q(z) / 4 + 7 for the
  dequantized z, which we recompute from the key the way the function splits it."""
  mix = oracles.GaussianMixture(
    weights=jnp.ones((1,)), means=jnp.zeros((1, 4)), variances=jnp.full((1,), 0.25)
  )
  images = jnp.asarray(np.random.default_rng(4).integers(64, 192, size=(16, 2, 2, 1)), jnp.uint8)
  key = jax.random.key(5)
  bpd, nfe = jax.jit(
    lambda mix, images, key: likelihood_ode.image_bits_per_dim(
      oracles.eps_fn_for(mix, COSINE), COSINE, images, key, divergence="exact"
    )
  )(mix, images, key)
  z = likelihood_ode.dequantize(jax.random.split(key)[0], images).reshape(16, 4)
  expected = -_true_log_prob(mix, COSINE, z, 1e-3) / (4 * math.log(2)) + 7.0
  np.testing.assert_allclose(bpd, expected, atol=1e-4)
  assert int(nfe) > 0
