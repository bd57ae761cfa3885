"""The Gaussian-mixture oracle: exact densities against SciPy float64, scores against autodiff, and
the optimal-predictor property of eps* by Monte Carlo."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from diffusion_jax import continuous_time, oracles, schedules


def _random_mixture(k: int, dim: int, seed: int) -> oracles.GaussianMixture:
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.ones(k))
  return oracles.GaussianMixture(
    weights=jnp.asarray(weights, jnp.float32),
    means=jnp.asarray(rng.normal(size=(k, dim)), jnp.float32),
    variances=jnp.asarray(rng.uniform(0.05, 0.5, size=k), jnp.float32),
  )


MIXTURES = {2: _random_mixture(3, 2, 0), 16: _random_mixture(4, 16, 1)}
# Jitted methods (the mixture is a pytree argument): eager calls would compile op by op.
GM = oracles.GaussianMixture
log_prob_t, score_t, eps = (jax.jit(f) for f in (GM.log_prob_t, GM.score_t, GM.eps))
sample = jax.jit(GM.sample, static_argnums=2)


def _scipy_log_prob_t(mix: oracles.GaussianMixture, x: np.ndarray, abar_N: np.ndarray):
  """log sum_k w_k N(x; sqrt(abar) mu_k, (abar sigma_k^2 + 1 - abar) I) in float64 by SciPy."""
  w, mu, var = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.variances))
  per_k = [
    np.log(w[k])
    + stats.norm.logpdf(
      x, loc=np.sqrt(abar_N)[:, None] * mu[k], scale=np.sqrt(abar_N * var[k] + 1 - abar_N)[:, None]
    ).sum(axis=1)
    for k in range(len(w))
  ]
  return special.logsumexp(np.stack(per_k), axis=0)


def _points(dim: int, n: int = 64) -> np.ndarray:
  """Mixture samples, spread-out Gaussian points and one far-out point (tests the log-sum-exp)."""
  near = np.asarray(sample(MIXTURES[dim], jax.random.key(dim), n // 2))
  spread = 2.0 * np.random.default_rng(dim).normal(size=(n // 2 - 1, dim))
  return np.concatenate([near, spread, np.full((1, dim), 30.0)]).astype(np.float32)


@pytest.mark.parametrize("dim", [2, 16])
def test_log_prob_matches_scipy(dim):
  mix, x = MIXTURES[dim], _points(dim)
  x64 = np.asarray(x, np.float64)
  expected = _scipy_log_prob_t(mix, x64, np.ones(x.shape[0]))
  np.testing.assert_allclose(jax.jit(GM.log_prob)(mix, x), expected, rtol=1e-5, atol=1e-4)
  for abar_N in (np.linspace(0.01, 0.99, x.shape[0]), np.full(x.shape[0], 0.3)):
    expected_t = _scipy_log_prob_t(mix, x64, abar_N)
    np.testing.assert_allclose(log_prob_t(mix, x, abar_N), expected_t, rtol=1e-5, atol=1e-4)


@jax.jit
@functools.partial(jax.vmap, in_axes=(None, 0, None))
@functools.partial(jax.grad, argnums=1)
def _grad_log_prob_t(mix: oracles.GaussianMixture, x_D: jax.Array, alpha_bar: jax.Array):
  """grad_x log q_t(x) by autodiff, per point of x [N, D]."""
  return mix.log_prob_t(x_D[None], alpha_bar)[0]


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("alpha_bar", [1.0, 0.9, 0.2, 1e-3])
def test_score_is_the_gradient_of_log_prob_t(dim, alpha_bar):
  mix, x = MIXTURES[dim], _points(dim)
  abar_N = np.full(x.shape[0], alpha_bar, np.float32)  # one compilation for every alpha-bar
  grad = _grad_log_prob_t(mix, x, alpha_bar)
  score = score_t(mix, x, abar_N)
  assert np.all(np.isfinite(np.asarray(score)))
  np.testing.assert_allclose(score, grad, rtol=1e-4, atol=1e-4)


def test_eps_limits():
  """eps* -> 0 as alpha-bar -> 1 (eps* = -sqrt(1 - abar) score), and eps* -> x as alpha-bar -> 0
  (q_t -> N(0, I), whose score is -x)."""
  mix, x = MIXTURES[2], _points(2)
  abar = lambda a: np.full(x.shape[0], a, np.float32)
  np.testing.assert_array_equal(eps(mix, x, abar(1.0)), 0.0)
  near_one = np.float32(1.0 - 1e-6)
  near_data = np.asarray(eps(mix, x, abar(near_one)))
  scale = np.sqrt(1.0 - near_one)  # ~1e-3
  expected = -scale * np.asarray(score_t(mix, x, abar(near_one)))
  np.testing.assert_allclose(near_data, expected, rtol=1e-5, atol=1e-9)
  assert np.max(np.abs(near_data[:32])) < 0.1  # at the mixture samples
  np.testing.assert_allclose(eps(mix, x, abar(1e-8)), x, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("alpha_bar", [1.0, 0.5, 1e-3])
def test_log_prob_t_normalises_in_1d(alpha_bar):
  """int q_t = 1 and int x q_t = sqrt(abar) sum_k w_k mu_k, by the trapezoid rule on a fine grid."""
  mix = oracles.GaussianMixture(
    weights=jnp.array([0.3, 0.7]),
    means=jnp.array([[-2.0], [1.5]]),
    variances=jnp.array([0.05, 0.4]),
  )
  grid = np.linspace(-12.0, 12.0, 48_001)
  q = np.exp(np.asarray(log_prob_t(mix, jnp.asarray(grid[:, None], jnp.float32), alpha_bar)))
  np.testing.assert_allclose(np.trapezoid(q, grid), 1.0, atol=1e-5)
  mean = np.sqrt(alpha_bar) * (0.3 * -2.0 + 0.7 * 1.5)
  np.testing.assert_allclose(np.trapezoid(grid * q, grid), mean, atol=1e-5)


def test_sample_moments():
  """Mean sum_k w_k mu_k and covariance sum_k w_k (sigma_k^2 I + mu_k mu_k^T) - m m^T."""
  mix, n = MIXTURES[2], 200_000
  x = np.asarray(sample(mix, jax.random.key(4), n), np.float64)
  w, mu, var = (np.asarray(a, np.float64) for a in (mix.weights, mix.means, mix.variances))
  mean = w @ mu
  cov = np.einsum("k,kd,ke->de", w, mu, mu) + np.sum(w * var) * np.eye(2) - np.outer(mean, mean)
  np.testing.assert_array_less(np.abs(x.mean(axis=0) - mean), 5 * np.sqrt(np.diag(cov) / n))
  np.testing.assert_allclose(np.cov(x.T), cov, atol=0.02)


def test_eps_is_the_conditional_mean_of_the_noise():
  """eps*(x_t) = E[eps | x_t], so eps - eps*(x_t) is uncorrelated with any function of x_t: here
  x_t and eps*(x_t) themselves, to 5 Monte Carlo standard errors."""
  mix, n, abar = MIXTURES[2], 200_000, 0.4
  x0 = np.asarray(sample(mix, jax.random.key(5), n), np.float64)
  noise = np.random.default_rng(6).normal(size=x0.shape)
  x_t = (np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise).astype(np.float32)
  eps_star = np.asarray(eps(mix, x_t, np.full(n, abar, np.float32)), np.float64)
  residual = noise - eps_star
  for g in (x_t.astype(np.float64), eps_star):
    products = residual * g
    se = products.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(products.mean(axis=0)), 5 * se)


@jax.jit
def _eps_fn_for_cases(mix, sched, x, t, t_mid):
  """eps_fn_for at integer t, the same t as floats, and t_mid between knots; with what each should
  equal: the mixture's eps at the discrete alpha-bar_t, and at the continuous alpha-bar(s)."""
  eps_fn = oracles.eps_fn_for(mix, sched)
  flat = x.reshape(x.shape[0], -1)
  s_mid = continuous_time.time_of(sched, t_mid)
  return (
    eps_fn(x, t),
    eps_fn(x, t.astype(jnp.float32)),
    eps_fn(x, t_mid),
    mix.eps(flat, sched.alphas_cumprod[t]).reshape(x.shape),
    mix.eps(flat, continuous_time.alpha_bar(sched, s_mid)).reshape(x.shape),
  )


def test_eps_fn_for_discrete_continuous_and_image_shapes():
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 100))
  mix = _random_mixture(2, 12, 2)  # images [B, 2, 2, 3] are vectors in R^12
  x = np.random.default_rng(7).normal(size=(5, 2, 2, 3)).astype(np.float32)
  t = np.array([0, 3, 50, 98, 99], np.int32)
  t_mid = np.array([-0.5, 0.25, 10.5, 60.75, 98.5], np.float32)  # between knots
  at_t, at_float_t, at_mid, expected, expected_mid = _eps_fn_for_cases(mix, sched, x, t, t_mid)
  assert at_t.shape == x.shape
  np.testing.assert_allclose(at_t, expected, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(at_float_t, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(at_mid, expected_mid, rtol=1e-6, atol=1e-8)
  assert np.all(np.abs(np.asarray(at_mid) - np.asarray(at_t)) > 0)
