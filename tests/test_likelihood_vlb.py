"""The variational bound: its pieces against closed forms, and the whole against exact oracles."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import data, oracles, schedules, variational_bound
from diffusion_jax.likelihood import vlb as likelihood_vlb

LN2 = math.log(2.0)
GRID = np.linspace(-1.0, 1.0, 256)  # every 8-bit value, scaled to [-1, 1]


def test_normal_kl_matches_closed_form_and_vanishes_for_equal_gaussians():
  rng = np.random.default_rng(0)
  m1, m2, lv1, lv2 = rng.normal(size=(4, 100))
  v1, v2 = np.exp(lv1), np.exp(lv2)
  expected = np.log(np.sqrt(v2 / v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
  kl = variational_bound.normal_kl(*(jnp.asarray(a, jnp.float32) for a in (m1, lv1, m2, lv2)))
  np.testing.assert_allclose(kl, expected, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(variational_bound.normal_kl(m1, lv1, m1, lv1)) == 0.0)


@pytest.mark.parametrize("mean, scale", [(0.3, 0.02), (-0.97, 0.004), (1.4, 0.5), (0.0, 10.0)])
def test_discretized_probabilities_over_all_256_values_sum_to_one(mean, scale):
  def total(dtype):
    x = jnp.asarray(GRID, dtype)
    log_p = variational_bound.discretized_gaussian_log_likelihood(
      x, jnp.full_like(x, mean), jnp.full_like(x, math.log(scale))
    )
    return float(np.exp(np.asarray(log_p, np.float64)).sum())

  assert total(jnp.float32) == pytest.approx(1.0, abs=2e-6)
  with jax.enable_x64(True):
    # The 1e-12 floor on far-away bins adds at most 256e-12.
    assert total(jnp.float64) == pytest.approx(1.0, abs=1e-9)


def test_discretized_log_likelihood_matches_scipy_cdf_differences():
  # Interior bins near the mean and in both tails (down to ~2e-8), and both edge bins.
  x = GRID[[0, 1, 10, 60, 127, 128, 140, 200, 245, 254, 255]]
  mean, scale = 0.05, 0.2
  lo, hi = (x - mean - 1 / 255) / scale, (x - mean + 1 / 255) / scale
  # Right of the mean, differences of survival functions keep float64's precision.
  interior = np.where(
    x > mean, stats.norm.sf(lo) - stats.norm.sf(hi), stats.norm.cdf(hi) - stats.norm.cdf(lo)
  )
  expected = np.where(
    x < -0.999, stats.norm.cdf(hi), np.where(x > 0.999, stats.norm.sf(lo), interior)
  )
  got = variational_bound.discretized_gaussian_log_likelihood(
    jnp.asarray(x, jnp.float32), jnp.full(x.shape, mean), jnp.full(x.shape, math.log(scale))
  )
  assert np.all(expected > 1e-10)
  np.testing.assert_allclose(got, np.log(expected), rtol=2e-5, atol=1e-5)


def test_discretized_log_likelihood_floors_hopeless_bins_at_1e12():
  log_p = variational_bound.discretized_gaussian_log_likelihood(
    jnp.array([1.0, -1.0, 0.0]), jnp.array([-1.0, 1.0, 0.9]), jnp.full((3,), math.log(1e-3))
  )
  np.testing.assert_allclose(log_p, math.log(1e-12), rtol=1e-6)


def test_gaussian_log_likelihood_is_the_normal_density():
  x, mean, log_scale = (
    np.array([0.3, -2.0, 5.0]),
    np.array([0.0, -1.5, 1.0]),
    np.array([0.0, -1.0, 1.0]),
  )
  expected = stats.norm.logpdf(x, mean, np.exp(log_scale))
  np.testing.assert_allclose(
    variational_bound.gaussian_log_likelihood(x, mean, log_scale), expected
  )


def test_prior_term_is_tiny_for_the_linear_1000_step_schedule():
  sched = schedules.make_schedule(schedules.get_beta_schedule("linear", 1000))
  x0 = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=-1.0, maxval=1.0)
  zeros = lambda x, t: jnp.zeros_like(x)
  terms = jax.jit(lambda x: likelihood_vlb.vlb_terms(zeros, sched, x, jax.random.key(1)))(x0)
  # KL(N(sqrt(abar) x0, 1 - abar) || N(0, 1)) = (abar x0^2 - abar - log(1 - abar)) / 2 per dim.
  abar = np.prod(1.0 - np.linspace(1e-4, 0.02, 1000))
  x = np.asarray(x0, np.float64).reshape(2, -1)
  kl = 0.5 * (abar * x**2 - abar - np.log1p(-abar))
  expected_bpd = kl.sum(axis=1) / (x.shape[1] * LN2)
  np.testing.assert_allclose(terms.prior_bpd, expected_bpd, rtol=1e-3)
  assert np.all(np.asarray(terms.prior_bpd) < 3e-5)


def test_bits_per_dim_by_hand_for_one_step():
  # T = 1, beta_1 = 1/2, and an eps_fn that recovers the true noise, so p(x0 | x1) = N(x0, 1/2):
  # L_0 = log(2 pi / 2) / 2 per dim, and L_1 = (x0^2 / 2 + 1/2 - 1 - log(1/2)) / 2 per dim.
  sched = schedules.make_schedule(np.array([0.5]))
  x0 = jnp.asarray(GRID[[3, 100, 180, 250, 30, 77]].reshape(2, 3), jnp.float32)
  exact_eps = lambda x, t: (x - math.sqrt(0.5) * x0) / math.sqrt(0.5)
  prior_nats = 0.5 * (np.square(np.asarray(x0)) / 2 - 0.5 - math.log(0.5))
  decoders = {
    "gaussian": 0.5 * math.log(math.pi),
    "discretized": -math.log(2 * stats.norm.cdf(1 / 255 / math.sqrt(0.5)) - 1),
  }
  for decoder, l0_nats in decoders.items():
    terms = likelihood_vlb.vlb_terms(exact_eps, sched, x0, jax.random.key(0), decoder=decoder)
    expected = (prior_nats + l0_nats).sum(axis=1) / (3 * LN2)
    np.testing.assert_allclose(terms.total_bpd, expected, rtol=1e-5)
    np.testing.assert_allclose(terms.terms_bpd[:, 0], 3 * l0_nats / (3 * LN2), rtol=1e-5)
    np.testing.assert_allclose(
      terms.total_bpd, terms.prior_bpd + terms.terms_bpd.sum(axis=1), rtol=1e-6
    )
  # 8 ln 2 nats per dimension is 8 bits per dimension (a uniform 8-bit pixel).
  assert float(variational_bound.nats_to_bpd(jnp.float32(3072 * 8 * LN2), 3072)) == pytest.approx(
    8.0
  )


def _bound_gap(mixture: oracles.GaussianMixture, num_timesteps: int, num_examples: int):
  """Monte-Carlo mean and standard error of VLB - (-log q_0(x0)) in nats, x0 ~ q_0, exact eps."""
  sched = schedules.make_schedule(schedules.get_beta_schedule("cosine", num_timesteps))
  eps_fn = oracles.eps_fn_for(mixture, sched)
  x0 = mixture.sample(jax.random.key(0), num_examples)
  total_bpd = jax.jit(
    lambda x: likelihood_vlb.vlb_terms(eps_fn, sched, x, jax.random.key(1), decoder="gaussian")
  )(x0).total_bpd
  gap = np.asarray(total_bpd, np.float64) * mixture.dim * LN2 + np.asarray(mixture.log_prob(x0))
  return gap.mean(), gap.std(ddof=1) / math.sqrt(num_examples)


def _gaussian_gap(betas: np.ndarray, mean: float, var: float) -> tuple[float, float]:
  """E[VLB] - E[-log q_0] for 1-D data N(mean, var): (prior + KL terms, decoder term), in nats.

  The gap is KL(q(x_{0:T}) || p(x_{0:T})) = KL(q(x_T) || N(0, 1)) + sum_t E KL(q(x_{t-1} | x_t) ||
  p(x_{t-1} | x_t)). For Gaussian data the true reverse step q(x_{t-1} | x_t) is Gaussian with the
  exact eps's mean and variance v_t = beta_t m_{t-1} / m_t, m_t = abar_t var + 1 - abar_t the
  marginal variance, so each term is a variance mismatch against sigma_t^2: `fixedlarge` takes
  beta_t for t >= 2 (off by O(beta_t), summing to O(1/T)) and the Gaussian decoder beta_1 at t = 1.
  """
  abar = np.cumprod(1.0 - betas)
  m = np.append(var, abar * var + 1.0 - abar)
  v = betas * m[:-1] / m[1:]
  sigma2 = betas
  ratio = v / sigma2
  kl_steps = 0.5 * (ratio - 1.0 - np.log(ratio))
  prior = 0.5 * (abar[-1] * mean**2 + m[-1] - 1.0 - np.log(m[-1]))
  return prior + kl_steps[1:].sum(), kl_steps[0]


@pytest.mark.parametrize("num_timesteps, num_examples", [(10, 16384), (100, 16384), (1000, 8192)])
def test_bound_on_gaussian_data_has_the_analytic_gap(num_timesteps, num_examples):
  mixture = oracles.GaussianMixture(jnp.ones(1), jnp.array([[0.5]]), jnp.array([0.25]))
  gap, stderr = _bound_gap(mixture, num_timesteps, num_examples)
  betas = schedules.get_beta_schedule("cosine", num_timesteps)
  kl_part, first_step = _gaussian_gap(betas, 0.5, 0.25)
  # Every part tightens as T grows: the prior and t >= 2 part like 1/T, the decoder's too.
  assert kl_part < {10: 0.06, 100: 0.007, 1000: 0.001}[num_timesteps]
  assert first_step < 2e-3
  assert gap > 0
  assert abs(gap - (kl_part + first_step)) < 4 * stderr + 2e-3, (gap, stderr, kl_part, first_step)


def test_bound_on_a_gaussian_mixture_holds_and_tightens_with_more_steps():
  weights, means, covariances = data.gaussian_mixture_params()  # 8 modes of std 0.1 in 2D
  mixture = oracles.GaussianMixture(
    jnp.asarray(weights, jnp.float32),
    jnp.asarray(means, jnp.float32),
    jnp.asarray(covariances[:, 0, 0], jnp.float32),
  )
  gaps = {t: _bound_gap(mixture, t, 4096) for t in (10, 100, 1000)}
  for gap, stderr in gaps.values():
    assert gap > -3 * stderr  # E[VLB] >= E[-log q_0(x0)]
  # Ten steps cannot carry the modes through; a hundred nearly can (about 0.97 vs 0.23 nats).
  assert gaps[10][0] - gaps[100][0] > 0.5
  # And a thousand steps close the bound to within a few hundredths of a nat.
  gap, stderr = gaps[1000]
  assert gap < gaps[100][0] + 3 * stderr and gap < 0.05 + 4 * stderr, (gaps, stderr)


def test_evaluate_vlb_averages_over_batches_and_counts_network_calls():
  mixture = oracles.GaussianMixture(jnp.ones(1), jnp.array([[0.0, 1.0]]), jnp.array([0.5]))
  sched = schedules.make_schedule(schedules.get_beta_schedule("cosine", 10))
  eps_fn = oracles.eps_fn_for(mixture, sched)
  batches = np.asarray(mixture.sample(jax.random.key(0), 12)).reshape(3, 4, 2)
  key = jax.random.key(1)
  summary = likelihood_vlb.evaluate_vlb(
    lambda params: eps_fn,
    {},
    sched,
    iter(batches),
    key,
    decoder="gaussian",
    num_examples=10,
    progress=False,
  )
  # Batch i uses fold_in(key, i). The last batch is cut to 2 examples and padded back to 4, which
  # leaves the noise of its real examples as it was.
  terms_fn = jax.jit(lambda b, k: likelihood_vlb.vlb_terms(eps_fn, sched, b, k, decoder="gaussian"))
  per_batch = [terms_fn(b, jax.random.fold_in(key, i)) for i, b in enumerate(batches)]
  total = np.concatenate([t.total_bpd for t in per_batch])[:10]
  terms = np.concatenate([t.terms_bpd for t in per_batch])[:10]
  assert summary.num_examples == 10 and summary.num_network_evals == 100
  assert summary.total_bpd == pytest.approx(total.mean(), rel=1e-5)
  assert summary.total_bpd_stderr == pytest.approx(total.std(ddof=1) / math.sqrt(10), rel=1e-4)
  np.testing.assert_allclose(summary.terms_bpd, terms.mean(axis=0), rtol=1e-5, atol=1e-7)


def test_the_decoder_follows_the_data():
  """Vectors get the Gaussian density decoder and images the 8-bit one, without being told: the
  8-bit decoder on continuous 2D data costs several bits per dimension for nothing."""
  sched = schedules.make_schedule(schedules.get_beta_schedule("cosine", 50))
  mixture = oracles.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.array([0.3]))
  eps_fn = oracles.eps_fn_for(mixture, sched)
  points = mixture.sample(jax.random.key(0), 256)
  key = jax.random.key(1)
  default = likelihood_vlb.vlb_terms(eps_fn, sched, points, key).total_bpd
  gaussian = likelihood_vlb.vlb_terms(eps_fn, sched, points, key, decoder="gaussian").total_bpd
  discretized = likelihood_vlb.vlb_terms(eps_fn, sched, points, key, decoder="discretized")
  np.testing.assert_array_equal(default, gaussian)
  assert float(jnp.mean(discretized.total_bpd)) > float(jnp.mean(gaussian)) + 2.0
  images, zero_eps = jnp.zeros((2, 4, 4, 1)), lambda x, t: jnp.zeros_like(x)
  np.testing.assert_array_equal(
    likelihood_vlb.vlb_terms(zero_eps, sched, images, key).total_bpd,
    likelihood_vlb.vlb_terms(zero_eps, sched, images, key, decoder="discretized").total_bpd,
  )
